"""Farmhand's actors and the messages they exchange.

The actors know nothing of the CLI or the farm they serve: they take commands
through their inboxes and report events through the channels they are given.
"""

from ._contain import Containment as Containment
from ._heartbeat import Heartbeat as Heartbeat
from ._heartbeat import HeartbeatStatistics as HeartbeatStatistics
from ._jobuser import JobUser as JobUser
from ._jobuser import JobUserError as JobUserError
from ._messages import ActionEnded as ActionEnded
from ._messages import ActionFailMessage as ActionFailMessage
from ._messages import ActionKind as ActionKind
from ._messages import ActionOutput as ActionOutput
from ._messages import ActionProgress as ActionProgress
from ._messages import ActionStarted as ActionStarted
from ._messages import ActionState as ActionState
from ._messages import ActionStatusMessage as ActionStatusMessage
from ._messages import Cancel as Cancel
from ._messages import Enqueue as Enqueue
from ._messages import EnterEnvironment as EnterEnvironment
from ._messages import ExitEnvironment as ExitEnvironment
from ._messages import Finish as Finish
from ._messages import QueuedAction as QueuedAction
from ._messages import Replace as Replace
from ._messages import Runnable as Runnable
from ._messages import RunTask as RunTask
from ._messages import SessionCommand as SessionCommand
from ._messages import SessionEnded as SessionEnded
from ._messages import SessionEvent as SessionEvent
from ._messages import SessionLog as SessionLog
from ._messages import Stop as Stop
from ._openjd import SUPPORTED_EXTENSIONS as SUPPORTED_EXTENSIONS
from ._output import REDACTED as REDACTED
from ._paths import SAFE_ID as SAFE_ID
from ._paths import UnsafePathError as UnsafePathError
from ._paths import path_under as path_under
from ._paths import safe_id as safe_id
from ._session import SessionConfig as SessionConfig
from ._session import SessionRunner as SessionRunner
from ._session import default_session_root as default_session_root
from ._worksession import AGENT_CREDENTIAL_VARIABLES as AGENT_CREDENTIAL_VARIABLES
