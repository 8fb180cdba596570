"""`python -m tests.stuck_worker ARGS`: the real worker (`python -m workers ARGS`), whose stage jobs get stuck in one
call that never reports progress (a blocking wait, as a job building a gigantic string or stuck in native code
is), so that what ends such a job can be tested."""

import sys
import threading

from pipeline import dag


def stuck_in_one_call(*args, **kwargs):
    threading.Event().wait()


dag.run_node = stuck_in_one_call

if __name__ == "__main__":
    from workers.worker import main

    sys.exit(main(sys.argv[1:]))
