"""Starts N local processes of one command as one multi-process JAX run.

python -m binaries.launch_local --num_processes=2 --cpu_devices=4 -- \
    python -m binaries.train_generative --config=configs/generative.py:tiger,tiny --workdir=runs/toy

Each process gets GENREC_COORDINATOR_ADDRESS (localhost and a free port),
GENREC_NUM_PROCESSES and GENREC_PROCESS_ID; every binary joins the run in
`binaries/common.run_stage` (`sharding.maybe_initialize_distributed`). With
--cpu_devices=D each process runs on CPU with D fake devices (the global
mesh then spans N * D devices): multi-host code paths on one machine. Lines
are prefixed with the process index. When a process fails (an error, a
signal) the others are stopped and the launcher exits non-zero, as a
cluster scheduler would; re-running the command resumes from the last
checkpoint. On a TPU pod slice or a GPU cluster run one process per host
instead (README, "Multi-process and multi-host").
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags
from absl import logging

_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 2, "Processes to start.", lower_bound=1)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "Run each process on CPU with this many fake devices "
    "(0: the processes use the machine's accelerators as JAX finds them).",
    lower_bound=0)
_PORT = flags.DEFINE_integer(
    "coordinator_port", 0, "Port of process 0's coordinator (0: a free one).",
    lower_bound=0)
_TIMEOUT = flags.DEFINE_float(
    "timeout", 0.0, "Stop every process after this many seconds and exit "
    "124 (0: no limit).", lower_bound=0.0)

# Seconds a stopped process gets to exit after SIGTERM before SIGKILL (JAX
# catches SIGTERM as a preemption notice: a process stuck in a collective
# with a dead peer needs the SIGKILL).
GRACE_SECONDS = 3.0
# Exit status when --timeout ran out.
TIMEOUT_STATUS = 124


def free_port() -> int:
  """A TCP port that was free a moment ago on localhost."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(index: int, num_processes: int, port: int,
                cpu_devices: int, base: dict[str, str]) -> dict[str, str]:
  """The environment of process `index` (see the module doc)."""
  env = dict(base)
  env.update(GENREC_COORDINATOR_ADDRESS=f"localhost:{port}",
             GENREC_NUM_PROCESSES=str(num_processes),
             GENREC_PROCESS_ID=str(index), PYTHONUNBUFFERED="1")
  if cpu_devices:
    flags_ = [f for f in env.get("XLA_FLAGS", "").split()
              if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(
        flags_ + [f"--xla_force_host_platform_device_count={cpu_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
  return env


def _copy_lines(index: int, stream, lock: threading.Lock) -> None:
  for line in iter(stream.readline, b""):
    with lock:
      sys.stdout.write(f"[{index}] {line.decode(errors='replace')}")
      sys.stdout.flush()
  stream.close()


def _stop(procs: list[subprocess.Popen]) -> None:
  """SIGTERM, then SIGKILL after GRACE_SECONDS, to the running processes."""
  alive = [p for p in procs if p.poll() is None]
  for p in alive:
    p.terminate()
  deadline = time.time() + GRACE_SECONDS
  for p in alive:
    try:
      p.wait(max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def _describe(status: int) -> str:
  if status < 0:
    return f"killed by {signal.Signals(-status).name}"
  return f"exited with status {status}"


def _status(code: int) -> int:
  """A process's exit code as a shell exit status (128 + signal)."""
  return 128 - code if code < 0 else code


def launch(command: list[str], num_processes: int, cpu_devices: int = 0,
           port: int = 0, timeout: float = 0.0) -> int:
  """Runs `command` as processes 0..num_processes-1; the exit status.

  0 when every process exits 0; else the first failure's status (128 + the
  signal number for a signal) after stopping the others, or
  TIMEOUT_STATUS when `timeout` seconds ran out.
  """
  port = port or free_port()
  lock = threading.Lock()
  procs, threads = [], []
  logging.info("launch_local: %d processes, coordinator localhost:%d%s",
               num_processes, port,
               f", {cpu_devices} CPU devices each" if cpu_devices else "")
  status, t0 = None, time.time()
  try:
    for i in range(num_processes):
      procs.append(subprocess.Popen(
          command, env=process_env(i, num_processes, port, cpu_devices,
                                   dict(os.environ)),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
      threads.append(threading.Thread(
          target=_copy_lines, args=(i, procs[-1].stdout, lock), daemon=True))
      threads[-1].start()
    while status is None:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        logging.error("launch_local: process %d %s; stopping the others", i,
                      _describe(code))
        status = _status(code)
      elif all(c == 0 for c in codes):
        status = 0
      elif timeout and time.time() - t0 > timeout:
        logging.error("launch_local: timeout after %.0fs; stopping every "
                      "process", timeout)
        status = TIMEOUT_STATUS
      else:
        time.sleep(0.2)
  finally:
    _stop(procs)
    for t in threads:
      t.join(timeout=10)
  return status


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("usage: launch_local [flags] -- COMMAND [ARGS...]")
  sys.exit(launch(argv[1:], _NUM_PROCESSES.value, _CPU_DEVICES.value,
                  _PORT.value, _TIMEOUT.value))


if __name__ == "__main__":
  app.run(main)
