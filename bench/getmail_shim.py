#!/usr/bin/python3
"""Run Debian 12's getmail6 (6.18.11) with its fork/SIGCHLD race fixed.

    getmail_shim.py [getmail options...]

getmail6 before 6.19 forks one child per delivered message and installs its
SIGCHLD handler only after fork(); a child that exits before the handler is
installed (likely on a busy 2-core machine) is never noticed, and getmail
gives up after 60 s with "operation error (waiting child pid N timed out)",
aborting the run (upstream issues getmail6#52, #226, #245; later releases
replaced this with multiprocessing's Process.join(), i.e. waitpid()). Under
load here it hit about once per 2000 messages, so without this fix getmail
runs are not measurable.

This shim replaces ForkingBase.forkchild with the same fork per message,
but waits for the child with waitpid(), as upstream now does. Everything else
(retrieval, parsing, Maildir delivery in a forked child) is getmail's own
code, unchanged. Then it runs /usr/bin/getmail as __main__.
"""
import os
import runpy
import sys

from getmailcore import baseclasses
from getmailcore.exceptions import getmailOperationError


def forkchild(self, childfun, with_out=True):
    self.child = child = baseclasses.Namespace()
    child.stdout = baseclasses.TemporaryFile23()
    child.stderr = baseclasses.TemporaryFile23()
    child.childpid = os.fork()
    if child.childpid == 0:
        childfun(child.stdout, child.stderr)   # ends with os._exit or execl
        os._exit(127)
    self.log.debug('spawned child %d\n' % child.childpid)
    _, status = os.waitpid(child.childpid, 0)
    if os.WIFSIGNALED(status):
        raise getmailOperationError('child pid %d killed by signal %d'
                                    % (child.childpid, os.WTERMSIG(status)))
    child.exitcode = os.WEXITSTATUS(status)
    child.stderr.seek(0)
    child.err = child.stderr.read().strip().decode()
    child.stdout.seek(0)
    if with_out:
        child.out = child.stdout.read().strip()
    return child


baseclasses.ForkingBase.forkchild = forkchild
sys.argv[0] = "/usr/bin/getmail"
runpy.run_path("/usr/bin/getmail", run_name="__main__")
