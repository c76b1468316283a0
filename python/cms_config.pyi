"""Type stubs for cms.cfg authors.

A cms.cfg is a Python file that cloud-mdir-sync runs with these names in its
globals. Point your editor at this file (for example with
``# type: ignore``-free checking via ``mypy --custom-typeshed-dir`` or by
copying it next to your config as ``cms_config.pyi``) to get completion.
"""

import datetime
from typing import Callable, List, Optional, Sequence, Union

class MailDirBox:
    """A local maildir; returned by MailDir()."""

    directory: str

class Office365Account:
    """An Office365 account; returned by Office365_Account()."""

    user: Optional[str]
    tenant: Optional[str]
    client_id: Optional[str]
    use_default_registration: bool
    device_code: bool

class GMailAccount:
    """A Google account; returned by GMail_Account()."""

    user: str

class CloudMailbox:
    """A cloud folder or label; returned by Office365() and GMail()."""

    name: str
    account: Union[Office365Account, GMailAccount]
    delete_action: str  # "archive" (default) or "delete"
    poll_interval: Optional[float]  # seconds between polls; default 15

class CredentialServerBox:
    """A token broker; returned by CredentialServer()."""

    path: str
    accounts: List[Union[Office365Account, GMailAccount]]
    umask: int
    protocols: List[str]

class Message:
    """What direct_message(msg) receives."""

    FLAG_REPLIED: int  # 1
    FLAG_READ: int  # 2
    FLAG_FLAGGED: int  # 4
    FLAG_DELETED: int  # 8
    mailbox: CloudMailbox
    email_id: Optional[str]
    flags: int
    content_hash: str
    storage_id: str
    received_time: Optional[datetime.datetime]  # naive, UTC
    size: int
    def get_header(self, name: str) -> Optional[str]: ...

class Config:
    """The ``cfg`` object."""

    message_db_dir: str  # default "~/mail/.cms/"
    direct_message: Callable[[Message], MailDirBox]
    rescan_interval: float  # seconds between full maildir rescans, default 3600

cfg: Config

def MailDir(directory: str) -> MailDirBox: ...
def Office365_Account(
    user: Optional[str] = None,
    tenant: Optional[str] = None,
    client_id: Optional[str] = None,
    use_default_registration: bool = False,
    device_code: bool = False,
) -> Office365Account: ...
def Office365(mailbox: str, account: Office365Account) -> CloudMailbox: ...
def GMail_Account(user: str) -> GMailAccount: ...
def GMail(label: str, account: GMailAccount) -> CloudMailbox: ...
def CredentialServer(
    path: str,
    accounts: Sequence[Union[Office365Account, GMailAccount]],
    umask: int = 0o600,
    protocols: Sequence[str] = ["SMTP"],
) -> CredentialServerBox: ...
