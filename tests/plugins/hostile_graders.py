"""A reward plug-in that reaches outside, by completion: each action must be refused."""

import ctypes
import gc
import os
import sqlite3
import subprocess
from pathlib import Path

HERE = Path(__file__).parent


def reach(prompts, completions, target=None, **kwargs):
    scores = []
    for text, path in zip(completions, target or [None] * len(completions)):
        if text == "read-own":
            scores.append(float((HERE / "answers.txt").read_text().strip()))
            continue
        if text == "read-outside":
            open(path).read()
        elif text == "list-outside":
            os.listdir(path)
        elif text == "write":
            (HERE / "planted.txt").write_text("x")
        elif text == "delete":
            os.remove(path)
        elif text == "fork":
            os.fork()
        elif text == "subprocess":
            subprocess.run(["true"])
        elif text == "native":
            ctypes.CDLL("libc.so.6")
        elif text == "environment":  # the reward service's bearer token must not be there
            scores.append(float(sum(name.startswith("HATCHERY_") for name in os.environ)))
            continue
        elif text == "sqlite":
            sqlite3.connect(str(HERE / "planted.db")).execute("create table t (x)")
        elif text == "chdir-then-dir-fd":
            os.chdir("/")
            os.close(os.open("etc/passwd", os.O_RDONLY))
        elif text == "climb":
            open(HERE / ".." / ".." / ".." / "etc" / "passwd").read()
        elif text.startswith("disarm-then-"):  # switch the audit hook off, as code written to escape can
            for obj in gc.get_objects():
                if type(obj).__name__ == "Confinement":
                    type(obj).__call__ = lambda self, event, args: None
            if text == "disarm-then-read":
                open(path).read()
            elif os.fork() == 0:  # disarm-then-fork
                os._exit(0)
        elif text == "spin":
            while True:
                pass
        scores.append(1.0)
    return scores
