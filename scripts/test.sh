#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need, starts the
# services they use on loopback, runs cargo nextest, and stops everything it started.
#
#   scripts/test.sh            # every test, the slow fault-injection group included
#   scripts/test.sh --fast     # skip the slow group
#
# Installed when missing: cargo-nextest, bubblewrap, busybox-static and systemd (apt; its
# systemd-analyze checks the unit in deploy/systemd), docker-compose (apt, with a Docker
# engine: the compose test), prometheus, chromium and chromium-driver
# (the metrics and dashboard tests), iproute2 and
# iptables (apt, as root: the nemesis test puts nodes in network namespaces on a bridge),
# moto[server], py-tes, pyftpdlib and kubernetes-validate (PyPI, into .venv/).
# Built: the test image shoal-test/busybox:latest (FROM scratch + Debian's static busybox; no
# registry needed), and shoal's own image shoal-test/shoal:latest (scripts/image.sh: debootstrap
# + the Dockerfile's base stage + the debug binary), when a Docker engine answers. Without one the docker tests are skipped
# with a message, unless SHOAL_REQUIRE_DOCKER=1 (the default when CI is set).
# Services started here (each on 127.0.0.1, on a free port, stopped on exit):
#   - moto_server: a real S3-compatible server (PyPI `moto[server]`), in .venv/
#   - scripts/ftp_server.py: a real FTP server (PyPI `pyftpdlib`), one user, a temporary root
# In CI (or with SHOAL_TEST_PREVIOUS=1) also built: the last build before format 5, from this
# repository's history, for the rolling-upgrade test (SHOAL_TEST_PREVIOUS_BIN).
# Exported to the tests: SHOAL_BIN, SHOAL_TEST_S3_ENDPOINT, SHOAL_TEST_S3_KEY, SHOAL_TEST_S3_SECRET,
# SHOAL_TEST_FTP_URL (ftp://user:password@127.0.0.1:port), SHOAL_TEST_FTP_ROOT (its directory),
# SHOAL_TEST_IMAGE and SHOAL_TEST_SHOAL_IMAGE (when the engine answers), SHOAL_TEST_PYTHON (the
# venv's python, with py-tes and kubernetes-validate).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

profile="default"
if [ "${1:-}" = "--fast" ]; then profile="fast"; fi

log() { printf '==> %s\n' "$*" >&2; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${ftp_root:-}" ]; then rm -rf "$ftp_root"; fi
}
trap cleanup EXIT INT TERM

# --- tools ---------------------------------------------------------------------------------
if ! command -v cargo-nextest >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# --- Debian packages: bubblewrap (the process executor's sandbox), busybox-static (test image),
# and as root iproute2 + iptables (network namespaces for the nemesis test) ---------------------
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v script >/dev/null 2>&1 || missing+=(bsdutils) # `script`: a pseudo-terminal for CLI tests
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd) # `systemd-analyze verify` of deploy/systemd
if [ "$(id -u)" = 0 ]; then
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium) # the dashboard test's browser
if docker version >/dev/null 2>&1; then # the compose test drives Debian's compose (v1)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
fi
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Prometheus for the metrics test, which starts its own on loopback. The package's service is
# not started (policy-rc.d), and nothing it recommends is installed (node exporter).
if ! command -v prometheus >/dev/null 2>&1; then
  log "installing prometheus (its service not started)"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod +x "$policy"
    trap '$sudo_cmd rm -f "$policy"' EXIT INT TERM # not left behind if the install fails
    placed=1
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
  if [ -n "${placed:-}" ]; then $sudo_cmd rm -f "$policy"; trap cleanup EXIT INT TERM; fi
  # Nor does it start at the next boot.
  if command -v systemctl >/dev/null 2>&1; then
    $sudo_cmd systemctl disable prometheus >/dev/null 2>&1 || true
  fi
fi

# --- the test image, built locally (there is no registry to pull from) -------------------------
test_image="shoal-test/busybox:latest"
if docker version >/dev/null 2>&1; then
  if ! docker image inspect "$test_image" >/dev/null 2>&1; then
    log "building $test_image from Debian's static busybox"
    context=$(mktemp -d)
    cp /bin/busybox "$context/busybox"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\nCMD ["/bin/sh"]\n' >"$context/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$test_image" "$context" >/dev/null 2>&1
    rm -rf "$context"
  fi
  export SHOAL_TEST_IMAGE="$test_image"
elif [ "${SHOAL_REQUIRE_DOCKER:-${CI:+1}}" = 1 ]; then
  log "no Docker engine answers, and the docker tests are required here (CI or SHOAL_REQUIRE_DOCKER=1)"
  exit 1
else
  log "no Docker engine answers: the docker executor tests will be skipped"
fi

# --- python venv with moto (S3), py-tes, pyftpdlib and kubernetes-validate (the manifests in
# deploy/kubernetes against the Kubernetes schemas) -------------------------------------------
venv="$root/.venv"
if [ ! -x "$venv/bin/moto_server" ] \
  || ! "$venv/bin/python" -c 'import tes, pyftpdlib, kubernetes_validate' 2>/dev/null; then
  log "creating $venv with moto[server], py-tes, pyftpdlib and kubernetes-validate"
  python3 -m venv "$venv"
  for try in 1 2 3; do
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.*' 'py-tes==1.1.4' \
      'pyftpdlib==2.*' 'kubernetes-validate==1.37.0' \
      && break
    if [ "$try" = 3 ]; then log "pip install failed three times"; exit 1; fi
    log "pip install failed; trying again"
    sleep 5
  done
fi
export SHOAL_TEST_PYTHON="$venv/bin/python"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url, seconds
  local deadline=$((SECONDS + $2))
  until curl -s -o /dev/null "$1"; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $1"; return 1; fi
    sleep 0.2
  done
}

s3_port=$(free_port)
log "starting moto_server on 127.0.0.1:$s3_port"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"${TMPDIR:-/tmp}/shoal-moto-$s3_port.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$s3_port/" 30
export SHOAL_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
export SHOAL_TEST_S3_KEY="shoal-test"
export SHOAL_TEST_S3_SECRET="shoal-test-secret"

ftp_port=$(free_port)
ftp_root=$(mktemp -d)
log "starting the FTP server on 127.0.0.1:$ftp_port (root $ftp_root)"
"$venv/bin/python" "$root/scripts/ftp_server.py" 127.0.0.1 "$ftp_port" "$ftp_root" shoal shoal-ftp-secret \
  >"${TMPDIR:-/tmp}/shoal-ftp-$ftp_port.log" 2>&1 &
pids+=($!)
ftp_deadline=$((SECONDS + 30))
until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $ftp_port), 1)" 2>/dev/null; do
  if ! kill -0 "${pids[-1]}" 2>/dev/null || [ $SECONDS -ge $ftp_deadline ]; then
    log "the FTP server did not start (see ${TMPDIR:-/tmp}/shoal-ftp-$ftp_port.log)"
    exit 1
  fi
  sleep 0.2
done
export SHOAL_TEST_FTP_URL="ftp://shoal:shoal-ftp-secret@127.0.0.1:$ftp_port"
export SHOAL_TEST_FTP_ROOT="$ftp_root"

# --- build once, then test ------------------------------------------------------------------
log "building"
cargo build --workspace --bins
export SHOAL_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/shoal"

# The rolling-upgrade test starts nodes of the last build before format 5 and upgrades them to
# this one. In CI (or with SHOAL_TEST_PREVIOUS=1) that is the real build of commit
# $previous_format_commit, from this repository's history, with its binary named
# shoal-previous so it shares the target dir (and every compiled dependency) without taking
# this build's place. Elsewhere the test runs this binary with a switch that makes it read
# and write format 4 only, which needs no second build.
previous_format_commit=fc9fd17
if [ "${SHOAL_TEST_PREVIOUS:-${CI:+1}}" = 1 ]; then
  previous_src="${CARGO_TARGET_DIR:-$root/target}/previous-format-src"
  if git -C "$root" cat-file -e "$previous_format_commit^{commit}" 2>/dev/null; then
    log "building the previous format's shoal (commit $previous_format_commit) as shoal-previous"
    if [ "$(cat "$previous_src/.commit" 2>/dev/null)" != "$previous_format_commit" ]; then
      rm -rf "$previous_src"
      mkdir -p "$previous_src"
      git -C "$root" archive "$previous_format_commit" | tar -x -C "$previous_src"
      sed -i 's/^name = "shoal"$/name = "shoal-previous"/' "$previous_src/node/Cargo.toml"
      echo "$previous_format_commit" >"$previous_src/.commit"
    fi
    (cd "$previous_src" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
      cargo build --locked -p shoal-node --bin shoal-previous)
    export SHOAL_TEST_PREVIOUS_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/shoal-previous"
  elif [ -n "${CI:-}" ]; then
    log "commit $previous_format_commit is not in this clone (a shallow one?): the rolling-upgrade"
    log "test needs that build in CI; fetch the whole history (git fetch --unshallow)"
    exit 1
  else
    log "commit $previous_format_commit is not in this clone: the upgrade test uses the switch"
  fi
fi

# shoal's own container image, built offline: deploy/Dockerfile's base stage on a Debian image
# made from Debian's packages, with this build's binary (scripts/image.sh).
if [ -n "${SHOAL_TEST_IMAGE:-}" ]; then
  log "building shoal's container image (scripts/image.sh)"
  if "$root/scripts/image.sh" "$SHOAL_BIN" shoal-test/shoal:latest; then
    export SHOAL_TEST_SHOAL_IMAGE="shoal-test/shoal:latest"
  elif [ "${SHOAL_REQUIRE_DOCKER:-${CI:+1}}" = 1 ]; then
    log "could not build shoal's image, and the image tests are required here"
    exit 1
  else
    log "could not build shoal's image: the image and compose tests will be skipped"
  fi
fi
# Compose projects a killed test run may have left (`docker-compose down` runs in its Drop).
if docker version >/dev/null 2>&1; then
  for project in $( (docker ps -a --format '{{.Label "com.docker.compose.project"}}'
    docker volume ls --format '{{.Label "com.docker.compose.project"}}'
    docker network ls --format '{{.Label "com.docker.compose.project"}}') | grep '^shoaltest' | sort -u); do
    log "removing the compose project $project left by an earlier run"
    docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f -v >/dev/null
    docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null
    docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null
  done
fi

log "running tests (profile: $profile)"
status=0
cargo nextest run --workspace --profile "$profile" --no-fail-fast || status=$?

# --- the deterministic simulation: a sweep of seeded fault schedules ------------------------
# Release build (the debug one runs about a seed a second). SHOAL_SIM_SEEDS and
# SHOAL_SIM_START change the sweep; a failing seed is printed with its schedule, and
# `shoal-sim --seed N --trace` replays it.
sim_seeds="${SHOAL_SIM_SEEDS:-1000}"
if [ "$profile" = "fast" ]; then sim_seeds="${SHOAL_SIM_SEEDS:-100}"; fi
log "simulation: sweeping $sim_seeds seeds"
cargo build --release -p shoal-tests --bin shoal-sim
"${CARGO_TARGET_DIR:-$root/target}/release/shoal-sim" --seeds "$sim_seeds" \
  --start "${SHOAL_SIM_START:-1}" || status=$?
exit "$status"
