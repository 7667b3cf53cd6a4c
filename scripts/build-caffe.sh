#!/usr/bin/env bash
# Build a CPU-only `caffe` command-line tool for the integration tests.
#
# Usage: scripts/build-caffe.sh
#
# The build lives outside the repository, in ${AVA_CAFFE_CACHE:-$HOME/.cache/ava-caffe}:
#   brocolli-caffe-9.0.2.tar.gz   the PyPI sdist (a BVLC-derived Caffe tree)
#   brocolli-caffe-9.0.2/         the sdist unpacked and left untouched (tools/extra/parse_log.py)
#   build/brocolli-caffe-9.0.2/   a separate copy that make builds in
#   bin/caffe                     wrapper that sets LD_LIBRARY_PATH and execs the real binary
#   build.log                     apt, pip and make output of the last build
#
# The last line on stdout is the absolute path of bin/caffe. A second run that finds a
# working binary does nothing else. Concurrent runs serialise on a flock in the cache.
set -euo pipefail

VERSION=9.0.2
NAME=brocolli-caffe-${VERSION}
CACHE=${AVA_CAFFE_CACHE:-${HOME}/.cache/ava-caffe}
mkdir -p "${CACHE}"
CACHE=$(cd "${CACHE}" && pwd -P)
SRC=${CACHE}/${NAME}
BUILD=${CACHE}/build/${NAME}
WRAPPER=${CACHE}/bin/caffe
LOG=${CACHE}/build.log
LOCK=${CACHE}/.lock

APT_PACKAGES=(
    g++ make libprotobuf-dev protobuf-compiler
    libgoogle-glog-dev libgflags-dev libhdf5-dev libopenblas-dev
    libboost-system-dev libboost-thread-dev libboost-filesystem-dev
)

say() { echo "build-caffe: $*" >&2; }

works() {
    [[ -x "${WRAPPER}" ]] && "${WRAPPER}" --version >/dev/null 2>&1
}

fail() {
    say "FAILED: $*"
    if [[ -f "${LOG}" ]]; then
        say "last lines of ${LOG}:"
        tail -n 60 "${LOG}" >&2
    fi
    exit 1
}

# Fast path without the lock: a finished build is never modified again.
if works; then
    echo "${WRAPPER}"
    exit 0
fi

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) say "unsupported platform $(uname -s)/$(uname -m): only Linux x86_64 is supported"; exit 2 ;;
esac

exec 9>"${LOCK}"
if ! flock -n 9; then
    say "another build holds ${LOCK}; waiting"
    flock 9
fi

# Another process may have finished the build while this one waited.
if works; then
    echo "${WRAPPER}"
    exit 0
fi

: >"${LOG}"
started=$(date +%s)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "${pkg}" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("${pkg}")
    fi
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || fail "missing packages ${missing[*]} and no apt-get"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || fail "missing packages ${missing[*]}; run as root or install them"
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    { "${sudo[@]}" apt-get update &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; } \
        >>"${LOG}" 2>&1 || fail "apt-get install"
fi

if [[ ! -f "${CACHE}/${NAME}.tar.gz" ]]; then
    say "downloading ${NAME} sdist"
    python3 -m pip download --no-deps --no-binary :all: --disable-pip-version-check \
        "brocolli-caffe==${VERSION}" -d "${CACHE}" >>"${LOG}" 2>&1 || fail "pip download"
fi

# Unpack and copy into temporary names and rename, so an interrupted run never leaves a
# half-written tree that a later run would take for a complete one.
if [[ ! -d "${SRC}" ]]; then
    rm -rf "${CACHE}/.unpack"
    mkdir "${CACHE}/.unpack"
    tar xzf "${CACHE}/${NAME}.tar.gz" -C "${CACHE}/.unpack" >>"${LOG}" 2>&1 || fail "unpacking the sdist"
    mv "${CACHE}/.unpack/${NAME}" "${SRC}"
    rm -rf "${CACHE}/.unpack"
fi

# Build in a copy so the unpacked sdist stays pristine; keep an existing copy so an
# interrupted build resumes where make stopped.
if [[ ! -d "${BUILD}" ]]; then
    mkdir -p "$(dirname "${BUILD}")"
    rm -rf "${BUILD}.tmp"
    cp -a "${SRC}" "${BUILD}.tmp"
    mv "${BUILD}.tmp" "${BUILD}"
fi

make_args=(
    -C "${BUILD}" -j"$(nproc)" all
    "LIBRARIES=glog gflags protobuf boost_system boost_filesystem boost_thread hdf5_hl hdf5 openblas m stdc++"
    # Keep a conda install (the Makefile looks for one in $HOME) out of the include path.
    ANACONDA_HOME=/nonexistent
)
say "building in ${BUILD} (a few minutes; log: ${LOG})"
CPATH=/usr/include/hdf5/serial${CPATH:+:${CPATH}} \
    LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/hdf5/serial${LIBRARY_PATH:+:${LIBRARY_PATH}} \
    make "${make_args[@]}" >>"${LOG}" 2>&1 || fail "make"

real=${BUILD}/.temp_release/tools/caffe
libdir=${BUILD}/.temp_release/lib
[[ -x "${real}" ]] || fail "make succeeded but ${real} is missing"

mkdir -p "${CACHE}/bin"
tmp=$(mktemp "${CACHE}/bin/.caffe.XXXXXX")
cat >"${tmp}" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="${libdir}\${LD_LIBRARY_PATH:+:\${LD_LIBRARY_PATH}}"
export LD_LIBRARY_PATH
exec "${real}" "\$@"
EOF
chmod 755 "${tmp}"
mv -f "${tmp}" "${WRAPPER}"

works || fail "${WRAPPER} --version does not run"
say "built in $(($(date +%s) - started)) s"
echo "${WRAPPER}"
