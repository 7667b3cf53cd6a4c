"""Handwritten digits with a PyTorch MLP, reported to AVA with the PyTorch monitor.

Run it with `python examples/torch_digits.py` (`make demo` runs it too). Run it again with the
same AVA_TRAINING_INSTANCE_ID and it resumes from the last checkpoint instead of starting over.
Metrics go to run/<id>/logs/metrics.jsonl, one checkpoint per epoch goes to the storage
(AVA_STORAGE_URL, by default <workspace>/storage).
"""

import sys

import torch
from sklearn.datasets import load_digits

from ava.train import base as train

EPOCHS = 8
BATCH_SIZE = 32


def digits():
    """Train and validation tensors: 80% / 20% of the digits, pixels scaled to [0, 1]."""
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    n_train = int(len(x) * 0.8)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def evaluate(model, data):
    model.eval()
    with torch.no_grad():
        logits = model(data[0])
    model.train()
    return {"accuracy": (logits.argmax(1) == data[1]).float().mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, data[1]).item()}


def main():
    train_ins = train.TrainInstance()
    (x_train, y_train), val = digits()

    torch.manual_seed(42)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)

    # Every 10 steps: loss, lr, speed, samples. Tensors are read on a background thread.
    monitor = train_ins.get_monitor_callback("torch", log_every=10, batch_size=BATCH_SIZE)
    start_epoch, _ = monitor.resume(model, optimizer, scheduler=scheduler)  # (0, 0) on a new instance

    for epoch in range(start_epoch, EPOCHS):
        order = torch.randperm(len(x_train))
        for k in range(0, len(x_train), BATCH_SIZE):
            idx = order[k:k + BATCH_SIZE]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            monitor.step(loss=loss, batch_size=len(idx), optimizer=optimizer)
        scheduler.step()
        # Validation values (phase "val"), then a checkpoint handed to the background uploader.
        monitor.epoch_end(model, optimizer, epoch, scheduler=scheduler, **evaluate(model, val))

    accuracy = evaluate(model, val)["accuracy"]
    train_ins.done()  # waits for the uploads (at most AVA_DONE_TIMEOUT seconds)

    print(f"PyTorch digits MLP: validation accuracy {accuracy:.4f}")
    print(f"  metrics:     {train_ins.metrics_path}")
    print(f"  checkpoints: {train_ins.get_snapshot_base_path()}")
    print(f"  snapshots:   {train_ins.storage_url}/snapshots/")
    return 0 if accuracy > 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
