"""cloud-mdir-sync configuration runtime.

This module is loaded by the Rust program into its embedded interpreter. It
provides the names a ``cms.cfg`` sees (``cfg``, ``MailDir``,
``Office365_Account``, ``Office365``, ``GMail_Account``, ``GMail``,
``CredentialServer``), runs the file, and reports errors as (file, line,
message, traceback). It has no side effects: it creates no directory and
opens no socket; the Rust side does that after validation.
"""

import sys
import traceback

FLAG_REPLIED = 1
FLAG_READ = 2
FLAG_FLAGGED = 4
FLAG_DELETED = 8


class ConfigObject:
    """Base of every object a config creates; remembers where."""

    _kind = "object"

    def __init__(self, location):
        self._cms_file, self._cms_line = location

    def __repr__(self):
        return "<%s from %s:%s>" % (self._kind, self._cms_file, self._cms_line)


def _config_location(path):
    """The innermost frame that belongs to the config file being run."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == path:
            return (frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return (path, 0)


def _need_str(what, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise TypeError("%s must be a string, not %s" % (what, type(value).__name__))


class MailDirBox(ConfigObject):
    """A local maildir (the object ``MailDir(...)`` returns)."""

    _kind = "MailDir"

    def __init__(self, location, directory):
        super().__init__(location)
        _need_str("MailDir directory", directory)
        self.directory = directory


class Office365Account(ConfigObject):
    """An Office365 OAuth account."""

    _kind = "Office365_Account"

    def __init__(self, location, user, tenant, client_id, use_default_registration,
                 device_code):
        super().__init__(location)
        _need_str("Office365_Account user", user, allow_none=True)
        _need_str("Office365_Account tenant", tenant, allow_none=True)
        _need_str("Office365_Account client_id", client_id, allow_none=True)
        self.user = user
        self.tenant = tenant
        self.client_id = client_id
        self.use_default_registration = bool(use_default_registration)
        self.device_code = bool(device_code)


class GMailAccount(ConfigObject):
    """A Google account."""

    _kind = "GMail_Account"

    def __init__(self, location, user):
        super().__init__(location)
        _need_str("GMail_Account user", user)
        self.user = user


class CloudMailbox(ConfigObject):
    """A cloud folder (Office365) or label (Gmail)."""

    def __init__(self, location, kind, name, account, account_type):
        super().__init__(location)
        self._kind = kind
        _need_str("%s mailbox name" % kind, name)
        if not isinstance(account, account_type):
            raise TypeError(
                "%s(): account must be the result of %s(...), not %r"
                % (kind, account_type._kind, account)
            )
        self.name = name
        self.account = account
        self.delete_action = "archive"
        self.poll_interval = None


class CredentialServerBox(ConfigObject):
    """A token broker on a UNIX socket."""

    _kind = "CredentialServer"

    def __init__(self, location, path, accounts, umask, protocols):
        super().__init__(location)
        _need_str("CredentialServer path", path)
        if isinstance(accounts, (Office365Account, GMailAccount)):
            accounts = [accounts]
        accounts = list(accounts)
        for a in accounts:
            if not isinstance(a, (Office365Account, GMailAccount)):
                raise TypeError(
                    "CredentialServer(): accounts must be Office365_Account or "
                    "GMail_Account objects, not %r" % (a,)
                )
        if isinstance(protocols, str):
            protocols = [protocols]
        self.path = path
        self.accounts = accounts
        self.umask = umask
        self.protocols = list(protocols)


class Config:
    """The ``cfg`` object: settings a config may change."""

    def __init__(self, default_direct_message, here=None):
        object.__setattr__(self, "_here", here)
        # The line of the config file that last set each setting.
        object.__setattr__(self, "_cms_lines", {})
        self.message_db_dir = "~/mail/.cms/"
        self.direct_message = default_direct_message
        # Seconds between full maildir rescans (the watcher's safety net).
        self.rescan_interval = 3600

    def __setattr__(self, name, value):
        if self._here is not None:
            self._cms_lines[name] = self._here()[1]
        object.__setattr__(self, name, value)


def _api(path):
    """The names a config sees, bound to a fresh state for ``path``."""
    maildirs, accounts, mailboxes, servers = [], [], [], []

    def here():
        return _config_location(path)

    def default_direct_message(msg):
        """Route every message to the first MailDir declared."""
        return maildirs[0]

    def MailDir(directory):
        """Declare a local maildir; the first one declared is the default."""
        box = MailDirBox(here(), directory)
        maildirs.append(box)
        return box

    def Office365_Account(user=None, tenant=None, client_id=None,
                          use_default_registration=False, device_code=False):
        """Declare an Office365 account (tenant/client_id default per domain)."""
        acct = Office365Account(here(), user, tenant, client_id,
                                use_default_registration, device_code)
        accounts.append(acct)
        return acct

    def Office365(mailbox, account):
        """Declare an Office365 folder to mirror; nested folders as "A/B"."""
        box = CloudMailbox(here(), "Office365", mailbox, account, Office365Account)
        mailboxes.append(box)
        return box

    def GMail_Account(user):
        """Declare a Google account."""
        acct = GMailAccount(here(), user)
        accounts.append(acct)
        return acct

    def GMail(label, account):
        """Declare a Gmail label to mirror ("INBOX" or a user label)."""
        box = CloudMailbox(here(), "GMail", label, account, GMailAccount)
        mailboxes.append(box)
        return box

    def CredentialServer(path, accounts, umask=0o600, protocols=["SMTP"]):
        """Declare a token broker on the UNIX socket ``path``."""
        srv = CredentialServerBox(here(), path, accounts, umask, protocols)
        servers.append(srv)
        return srv

    names = {
        "MailDir": MailDir,
        "Office365_Account": Office365_Account,
        "Office365": Office365,
        "GMail_Account": GMail_Account,
        "GMail": GMail,
        "CredentialServer": CredentialServer,
    }
    for name, fn in names.items():
        fn.__qualname__ = name
    cfg = Config(default_direct_message, here)
    state = {
        "cfg": cfg,
        "maildirs": maildirs,
        "accounts": accounts,
        "mailboxes": mailboxes,
        "credential_servers": servers,
        "default_direct_message": default_direct_message,
    }
    return names, state


class LoadError(Exception):
    """A config failed: carries file, line, message and traceback text."""

    def __init__(self, file, line, message, tb):
        super().__init__(message)
        self.file = file
        self.line = line
        self.message = message
        self.tb = tb


def _where(exc, path):
    """The config-file line an exception points at."""
    if isinstance(exc, SyntaxError) and exc.filename == path:
        return exc.lineno or 0
    line = 0
    for fs in traceback.extract_tb(exc.__traceback__):
        if fs.filename == path:
            line = fs.lineno
    return line


def _format_tb(exc, path):
    """The traceback from the first frame of the config file on."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def load(path):
    """Run the config at ``path``; returns the collected state or raises LoadError."""
    names, state = _api(path)
    g = {
        "__name__": "__cms_config__",
        "__file__": path,
        "__builtins__": __builtins__,
        "cfg": state["cfg"],
    }
    g.update(names)
    try:
        with open(path, "rb") as f:
            source = f.read()
        code = compile(source, path, "exec")
        exec(code, g)
    except SyntaxError as e:
        msg = "%s: %s" % (type(e).__name__, e.msg)
        raise LoadError(path, _where(e, path), msg,
                        "".join(traceback.format_exception_only(type(e), e))) from None
    except OSError as e:
        if e.filename == path:
            raise LoadError(path, 0, "cannot read config: %s" % (e.strerror or e,), "") from None
        raise LoadError(path, _where(e, path), "%s: %s" % (type(e).__name__, e),
                        _format_tb(e, path)) from None
    except BaseException as e:  # noqa: B902 - report anything the config raised
        if isinstance(e, SystemExit):
            msg = "config called exit(%r)" % (e.code,)
        else:
            msg = "%s: %s" % (type(e).__name__, e)
        raise LoadError(path, _where(e, path), msg, _format_tb(e, path)) from None
    return state
