# Sourced by scripts/setup and scripts/setup-vllm (not a command). The caller sets STEP_NAME, the
# prefix of every line it prints, and VENV, the virtualenv it sets up.
#
# A step announces itself, runs with its output held back, and on failure shows that output (pip's
# own message), says which step failed and what to try, and stops the script with the step's status.

STEP_LOG=$(mktemp)
trap 'rm -f "$STEP_LOG"' EXIT

say() { echo "$STEP_NAME: $*"; }

die() {  # die STATUS MESSAGE HINT
  echo "$STEP_NAME: $2" >&2
  echo "$STEP_NAME: try: $3" >&2
  exit "$1"
}

run_step() {  # run_step WHAT HINT COMMAND...
  local what=$1 hint=$2 status=0
  shift 2
  say "$what ..."
  "$@" >"$STEP_LOG" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$STEP_LOG" >&2
    die "$status" "FAILED while $what (exit $status)." "$hint"
  fi
}

# One setup of $VENV at a time: a second one (scripts/serve in one terminal, scripts/test in
# another) waits here instead of racing the first into the same virtualenv.
take_lock() {
  mkdir -p "$VENV"
  if ! command -v flock >/dev/null; then
    say "no flock on this system: do not run two setups of $VENV at once"
    return 0
  fi
  exec 9>"$VENV/.setup.lock"
  flock -n 9 && return 0
  say "another setup of $VENV is running; waiting for it to finish ..."
  flock 9
}

create_venv() {  # create_venv MIN_MINOR: $VENV with ${PYTHON:-python3}, which must be 3.MIN_MINOR or newer
  [ -x "$VENV/bin/python" ] && return 0
  local python=${PYTHON:-python3}
  command -v "$python" >/dev/null ||
    die 1 "no '$python' on PATH to create $VENV with." "install Python 3.$1 or newer, or set PYTHON=/path/to/python3"
  run_step "creating $VENV with $("$python" --version 2>&1)" \
    "Python 3.$1+ with its venv module (Debian/Ubuntu: apt-get install python3-venv), or PYTHON=/path/to/python3" \
    "$python" -c "import sys, venv
if sys.version_info < (3, $1):
    sys.exit('this needs Python 3.$1 or newer; set PYTHON=/path/to/a/newer/python3')
venv.main()" "$VENV"
}
