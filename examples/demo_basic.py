"""A first end-to-end run: workspace, params, a real (numpy) training loop, metrics, status,
and delivery to the reference platform server.

Run it with `make demo`. It starts `python -m ava.platform_server` on 127.0.0.1, trains a
softmax classifier on three Gaussian blobs with plain numpy, records batch metrics and
per-epoch validation accuracy through TrainInstance (which also sends them to the server),
and prints where the status and metrics went and how many points the server received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORKSPACE = Path(os.environ.get("AVA_DEMO_WORKSPACE", Path.cwd() / "demo-workspace"))

from ava.params.params import Params  # noqa: E402
from ava.train import base as train  # noqa: E402
from ava.workspace import Workspace  # noqa: E402


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centers = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    y = rng.integers(0, 3, size=n)
    x = centers[y] + rng.normal(scale=0.9, size=(n, 2))
    return x, y


def start_platform_server(db: Path) -> tuple[subprocess.Popen, str]:
    """The reference platform server in its own process; its first stdout line is its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "ava.platform_server", "--port", "0", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit("the platform server did not start")
    return proc, url


def main() -> int:
    ws = Workspace.create(WORKSPACE)
    server, url = start_platform_server(ws.root / "platform.db")
    try:
        return train_and_report(ws, url)
    finally:
        server.terminate()
        server.wait(10)


def train_and_report(ws: Workspace, url: str) -> int:
    (ws.params_dir / "default.json").write_text(json.dumps({
        "epochs": 5, "batch_size": 32, "solverOps": {"lr": 0.5, "lr_decay": 0.7}, "seed": 7,
    }, indent=2))
    params = Params(ws.params_dir)
    epochs = params.get_value("epochs", is_required=True)
    batch_size = params.get_value("batch_size", is_required=True)
    lr = params.get_value("solverOps.lr", is_required=True)
    decay = params.get_value("solverOps.lr_decay", default=1.0)
    rng = np.random.default_rng(params.get_value("seed", default=0))

    x_train, y_train = make_data(rng, 2000)
    x_val, y_val = make_data(rng, 500)
    w = np.zeros((2, 3))
    b = np.zeros(3)

    env = {**os.environ, "AVA_STATUS_HOST": url, "AVA_API_HOST": url}
    with train.TrainInstance(workspace=ws, env=env) as ins:
        step = 0
        batches = len(x_train) // batch_size
        for epoch in range(epochs):
            order = rng.permutation(len(x_train))
            for batch in range(batches):
                idx = order[batch * batch_size:(batch + 1) * batch_size]
                logits = x_train[idx] @ w + b
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                loss = -np.log(p[np.arange(len(idx)), y_train[idx]] + 1e-12).mean()
                acc = (p.argmax(axis=1) == y_train[idx]).mean()
                grad = p
                grad[np.arange(len(idx)), y_train[idx]] -= 1
                grad /= len(idx)
                w -= lr * (x_train[idx].T @ grad)
                b -= lr * grad.sum(axis=0)
                step += 1
                if step % 2 == 0:
                    ins.log_metrics({"loss": loss, "accuracy": acc, "lr": lr}, step=step, epoch=epoch, batch=batch)
            val_acc = ((x_val @ w + b).argmax(axis=1) == y_val).mean()
            ins.log_metrics({"accuracy": val_acc}, step=step, epoch=epoch, phase="val")
            print(f"epoch {epoch}: train loss {loss:.4f}, validation accuracy {val_acc:.3f}")
            lr *= decay

    status = json.loads(Path(ins.status_path).read_text())
    records = sum(1 for _ in open(ins.metrics_path))
    with urllib.request.urlopen(f"{url}/v1/trainings/{ins.get_training_ins_id()}/metrics") as resp:
        received = len(json.load(resp))
    print(f"status:  {ins.status_path} ({status['status']})")
    print(f"metrics: {ins.metrics_path} ({records} records)")
    print(f"log:     {Path(ins.get_log_base_path()) / 'run.log'}")
    print(f"server:  {url} received {received} points")
    ava = Path(sys.executable).parent / "ava"  # the venv's: `ava` alone needs the venv activated
    print(f"see it:  AVA_WORKSPACE={ws.root} {ava} runs show {ins.get_training_ins_id()} --plot loss.png")
    return 0 if status["status"] == "done" and records > 0 and received == records else 1


if __name__ == "__main__":
    sys.exit(main())
