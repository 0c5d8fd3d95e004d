"""Run the ``vulnsteer`` CLI as a separate process per command, cheaply.

A warm server process imports torch, transformers and vulnsteer once; each command is then run in a process
forked from it: a real process with its own exit code, stdout, stderr, working directory and environment, without
paying ~5 s of imports per command. :func:`run_cli` (``python -m vulnsteer.cli``) is the plain, cold way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: The server: reads one JSON request per line, forks, runs the CLI in the child, answers with the exit code.
_SERVER = r"""
import json, os, sys, traceback
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
import vulnsteer.cli, vulnsteer.detection.engine, vulnsteer.experiment.engine, vulnsteer.lm.budget
for folder in sys.argv[1:]:  # load once what the commands will load, so its lazy imports happen here, once
    AutoConfig.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(folder)
protocol = os.fdopen(os.dup(1), "w")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd, path in ((1, req["out"]), (2, req["err"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            try:
                code = vulnsteer.cli.main(req["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    protocol.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    protocol.flush()
"""


@dataclass(frozen=True)
class Result:
    """A finished command: exit code, stdout, stderr."""

    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli_env(cache: Path, **extra: str) -> dict[str, str]:
    """The environment every test command runs in: offline hub, a private cache, one thread."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VULNSTEER_", "TQDM_"))},
        "HF_HUB_OFFLINE": "1",
        "VULNSTEER_CACHE": str(cache),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class ForkServer:
    """Runs CLI commands in processes forked from one warm interpreter (see the module docstring)."""

    def __init__(self, workdir: Path, env: dict[str, str], warm: tuple[Path, ...] = ()) -> None:
        """*warm*: model folders to load once in the server (their lazy imports are then done for every child)."""
        self.workdir = workdir
        self.env = env
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, *map(str, warm)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            cwd=workdir,
        )

    def run(self, argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
        self.count += 1
        out, err = self.workdir / f"cmd{self.count}.out", self.workdir / f"cmd{self.count}.err"
        request = {
            "argv": argv,
            "cwd": str(cwd or self.workdir),
            "env": env or self.env,
            "out": str(out),
            "err": str(err),
        }
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the CLI fork server died")
        rc = int(json.loads(answer)["rc"])
        return Result(rc, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_cli(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> Result:
    """``python -m vulnsteer.cli ARGV`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", "vulnsteer.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
