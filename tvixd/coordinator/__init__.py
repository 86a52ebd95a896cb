"""The coordinator: jobs over one shared derivation graph, driven through the ``fsm`` machines.

=====================  ===========================================================
module                 what it holds
=====================  ===========================================================
``coordinator``        :class:`Coordinator`: lifetime, submit/get/list/cancel
``streams``            watch (a job's events) and follow_log (a derivation's build log)
``jobdriver``          jobs: start, evaluate, finish, cancel, resume after a restart
``driver``             derivations: events to the machines, and acting on their states
``graph``              the shared graph: nodes, dependents, which jobs need which node
``jobs``               a running job's bookkeeping
``listeners``          the journal listeners attached to every machine
``slots``              what a build slot does: build, report, push, report
``dispatch``           the build slots' queue and ``max_jobs`` workers
``realise``            the work of ``build`` and ``push``
``inputs``             a build's input closure; input sources made available
``push``               path infos from a build's outputs
``logs``               build log lines: stored (capped) and sent to jobs' event logs
``retry``              the retry policy
``hub``                live fan-out to watchers
``errors``             ``Unavailable`` (besides ``clients.errors``)
=====================  ===========================================================

See docs/coordinator.md.
"""

from __future__ import annotations

from tvixd.coordinator.coordinator import Coordinator
from tvixd.coordinator.errors import Unavailable
from tvixd.coordinator.retry import RetryPolicy

__all__ = ["Coordinator", "RetryPolicy", "Unavailable"]
