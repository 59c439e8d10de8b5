"""Test-only fault injection for DVC's own write of dvc.lock (tests/test_interrupts.py puts this folder on
PYTHONPATH, so every Python process it starts imports this file at start-up).

With KICKOFF_TEST_CUT_DVC_LOCK=SIGNAL:WHERE, the first time the process writes dvc.lock through DVC's
`dvc.utils.serialize._common._dump_data` (as `dvc repro` does after each stage), it writes the new text
only up to WHERE -- as DVC does, into the file opened with "w+" -- flushes it and sends itself SIGNAL:
the interrupt lands at the lock write, at a byte the test chose, not by a sleep race.

WHERE: `entries` -- just before the third entry's name line (valid YAML, the later entries missing);
`line` -- in the middle of a hash (no newline at the end); `key` -- in the middle of a key (not YAML at all).

With KICKOFF_TEST_KILL_SNAKEMAKE=MODULE, a process started as `python -m MODULE` (a stage a Snakemake job
runs) first sends SIGKILL to the Snakemake process that started it (its pid: KICKOFF_PIPELINE_PID, which the
Snakefile's onstart sets), then goes on: Snakemake dies at a known moment, and its job finishes as an orphan.

With KICKOFF_TEST_CTRL_C_AT_IMPORT=MODULE:PACKAGE, a process started as `python -m MODULE` sends SIGINT to its
process group -- what a terminal's Ctrl-C does -- when it starts importing PACKAGE (torch: seconds of start-up).
"""
import os
import sys

SPEC = os.environ.get("KICKOFF_TEST_CUT_DVC_LOCK")
KILL_FROM = os.environ.get("KICKOFF_TEST_KILL_SNAKEMAKE")

if KILL_FROM and sys.orig_argv[1:3] == ["-m", KILL_FROM] and os.environ.get("KICKOFF_PIPELINE_PID"):
    import signal

    os.kill(int(os.environ["KICKOFF_PIPELINE_PID"]), signal.SIGKILL)


def _cut_at(text: str, where: str) -> int:
    import re

    if where == "entries":
        return [m.start() for m in re.finditer(r"^  \S+:\n", text, re.M)][2]
    if where == "line":
        m = list(re.finditer(r"^ +md5: ", text, re.M))[40]
        return m.end() + 10
    if where == "key":
        m = list(re.finditer(r"^ +hash: md5\n", text, re.M))[40]
        return m.start() + m.group().index("hash") + 4  # "      hash" and no colon
    raise ValueError(f"KICKOFF_TEST_CUT_DVC_LOCK: where {where!r}; allowed: entries, line, key")


def _patch(common) -> None:
    import io
    import signal

    original = common._dump_data
    name, where = SPEC.split(":")

    def dump(path, data, dumper, fs=None, **dumper_args):
        if os.path.basename(os.fsdecode(path)) != "dvc.lock":
            return original(path, data, dumper, fs=fs, **dumper_args)
        buffer = io.StringIO()
        dumper(data, buffer, **dumper_args)
        text = buffer.getvalue()
        with open(path, "w+", encoding="utf-8") as f:  # as DVC opens it: emptied first
            f.write(text[:_cut_at(text, where)])
            f.flush()
            os.kill(os.getpid(), getattr(signal, name))  # SIGINT: KeyboardInterrupt from here; the others: gone
        return None

    common._dump_data = dump


CTRL_C = os.environ.get("KICKOFF_TEST_CTRL_C_AT_IMPORT")

if CTRL_C and sys.orig_argv[1:3] == ["-m", CTRL_C.split(":")[0]]:
    import importlib.abc

    class _CtrlC(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname == CTRL_C.split(":")[1]:
                import signal

                sys.meta_path.remove(self)
                os.killpg(os.getpgid(0), signal.SIGINT)  # KeyboardInterrupt from here, inside the import
            return None

    sys.meta_path.insert(0, _CtrlC())

if SPEC:
    import importlib.abc

    class _AfterImport(importlib.abc.MetaPathFinder):
        """Patches DVC's dump function as soon as its module has run."""

        def find_spec(self, fullname, path=None, target=None):
            if fullname != "dvc.utils.serialize._common":
                return None
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        break
            else:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _AfterImport())
