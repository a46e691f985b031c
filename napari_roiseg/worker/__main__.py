"""``python -m napari_roiseg.worker FD NICE THREADS EAGER``: the model process's entry point
(started by ``ProcessWorker.start``; FD is its end of a socket pair)."""

import sys
from multiprocessing.connection import Connection

from .child import main

fd, nice, threads, eager = (int(v) for v in sys.argv[1:5])
main(Connection(fd), nice, threads or None, bool(eager))
