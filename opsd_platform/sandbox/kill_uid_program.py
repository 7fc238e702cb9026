"""Kills every process of one uid (`python -I -S -c <this file> UID`, as root): kill(-1) as that
uid signals exactly its own processes."""

if __name__ != "__main__":  # a program, read as text and run with `python -I -S -c`; never imported
    raise ImportError(__name__ + " is a program for the sandbox: run it with python -c, do not import it")
import os
import signal
import sys

u = int(sys.argv[1])
os.setgroups([])
os.setresgid(u, u, u)
os.setresuid(u, u, u)
try:
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass
