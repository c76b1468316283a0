//! Collecting what a config created: runs `cms.cfg` through the Python
//! runtime and copies the objects' attributes into plain Rust data
//! ([`RawConfig`]), unchecked. The live Python objects routing needs are kept
//! apart in [`PyObjects`].

use std::path::Path;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::python::{format_pyerr, runtime_module};
use super::{CloudKind, ConfigError, PyActor};

/// A value with the config line that produced it.
#[derive(Clone, Debug, PartialEq)]
pub struct At<T> {
    /// 1-based line in the config file (0 if unknown).
    pub line: u32,
    /// The value.
    pub value: T,
}

/// `MailDir(directory)` as written.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMaildir {
    /// The directory string, unexpanded.
    pub directory: String,
}

/// An account as written.
#[derive(Clone, Debug, PartialEq)]
pub struct RawAccount {
    /// Service.
    pub kind: CloudKind,
    /// `user=`.
    pub user: Option<String>,
    /// `tenant=` (Office365).
    pub tenant: Option<String>,
    /// `client_id=` (Office365).
    pub client_id: Option<String>,
    /// `use_default_registration=` (Office365).
    pub use_default_registration: bool,
    /// `device_code=` (Office365).
    pub device_code: bool,
}

/// An attribute a config may have set to anything: kept as its `repr` when
/// it is not of the expected type, so validation can name it.
#[derive(Clone, Debug, PartialEq)]
pub enum Loose<T> {
    /// Of the expected type.
    Ok(T),
    /// Something else; the Python `repr`.
    Other(String),
}

/// `Office365(...)` / `GMail(...)` as written, with attributes set later.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMailbox {
    /// Service.
    pub kind: CloudKind,
    /// Folder or label name.
    pub name: String,
    /// Index into [`RawConfig::accounts`].
    pub account: usize,
    /// `box.delete_action`.
    pub delete_action: Loose<String>,
    /// `box.poll_interval` (seconds), `None` when unset.
    pub poll_interval: Option<Loose<f64>>,
}

/// `CredentialServer(...)` as written.
#[derive(Clone, Debug, PartialEq)]
pub struct RawCredentialServer {
    /// Socket path, unexpanded.
    pub path: String,
    /// Indexes into [`RawConfig::accounts`].
    pub accounts: Vec<usize>,
    /// `umask=`.
    pub umask: Loose<i64>,
    /// `protocols=`, each as its `str()`.
    pub protocols: Vec<String>,
}

/// Everything the config created, unchecked.
#[derive(Clone, Debug, PartialEq)]
pub struct RawConfig {
    /// Absolute path of the config file.
    pub file: std::path::PathBuf,
    /// `cfg.message_db_dir`.
    pub message_db_dir: Loose<String>,
    /// Maildirs in declaration order.
    pub maildirs: Vec<At<RawMaildir>>,
    /// Accounts in declaration order.
    pub accounts: Vec<At<RawAccount>>,
    /// Cloud mailboxes in declaration order.
    pub mailboxes: Vec<At<RawMailbox>>,
    /// Credential servers in declaration order.
    pub credential_servers: Vec<At<RawCredentialServer>>,
    /// True when `cfg.direct_message` is not the built-in default.
    pub custom_router: bool,
    /// `cfg.rescan_interval`, seconds, with the line that set it.
    pub rescan_interval: At<Loose<f64>>,
}

/// The live objects routing needs; they belong to the Python thread.
pub struct PyObjects {
    /// The objects `MailDir(...)` returned, by index.
    pub maildirs: Vec<Py<PyAny>>,
    /// The objects `Office365(...)`/`GMail(...)` returned, by index.
    pub mailboxes: Vec<Py<PyAny>>,
    /// The `cfg` object (its `direct_message` is read at each pass).
    pub cfg: Py<PyAny>,
}

/// Run the config file and collect what it created.
pub fn collect(actor: &PyActor, file: &Path) -> Result<(RawConfig, PyObjects), ConfigError> {
    let path = file.to_path_buf();
    let gone = |_| ConfigError::at(file, 0, "the Python thread stopped");
    actor
        .call(move |py| collect_on_thread(py, &path))
        .map_err(gone)?
}

fn collect_on_thread(py: Python<'_>, file: &Path) -> Result<(RawConfig, PyObjects), ConfigError> {
    let internal = |e: PyErr| ConfigError {
        file: file.to_path_buf(),
        line: 0,
        message: format!("internal error in the config runtime: {e}"),
        traceback: Some(format_pyerr(py, &e)),
    };
    let rt = runtime_module(py).map_err(internal)?;
    let path_str = file.to_string_lossy().into_owned();
    let state = match rt.getattr("load").and_then(|f| f.call1((path_str,))) {
        Ok(s) => s,
        Err(e) => return Err(load_error(py, file, &e)),
    };
    let state = state
        .cast_into::<PyDict>()
        .map_err(|e| internal(e.into()))?;
    gather(py, file, &state).map_err(internal)
}

/// Turn the runtime's `LoadError` (or anything else) into a located error.
fn load_error(py: Python<'_>, file: &Path, err: &PyErr) -> ConfigError {
    let v = err.value(py);
    let field = |name: &str| v.getattr(name).ok();
    let is_load_error = field("tb").is_some() && field("line").is_some();
    if !is_load_error {
        return ConfigError {
            file: file.to_path_buf(),
            line: 0,
            message: err.to_string(),
            traceback: Some(format_pyerr(py, err)),
        };
    }
    let line = field("line")
        .and_then(|l| l.extract::<u32>().ok())
        .unwrap_or(0);
    let message = field("message")
        .and_then(|m| m.extract::<String>().ok())
        .unwrap_or_else(|| err.to_string());
    let tb = field("tb").and_then(|t| t.extract::<String>().ok());
    ConfigError {
        file: file.to_path_buf(),
        line,
        message,
        traceback: tb.filter(|t| !t.is_empty()),
    }
}

fn item<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?
        .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(key.to_string()))
}

/// The line of the config file that set `cfg.<name>`, 0 when none did.
fn setting_line(cfg: &Bound<'_, PyAny>, name: &str) -> u32 {
    cfg.getattr("_cms_lines")
        .and_then(|d| d.get_item(name))
        .and_then(|l| l.extract::<u32>())
        .unwrap_or(0)
}

fn line_of(obj: &Bound<'_, PyAny>) -> u32 {
    obj.getattr("_cms_line")
        .and_then(|l| l.extract::<u32>())
        .unwrap_or(0)
}

fn opt_str(obj: &Bound<'_, PyAny>, attr: &str) -> PyResult<Option<String>> {
    let v = obj.getattr(attr)?;
    if v.is_none() {
        Ok(None)
    } else {
        Ok(Some(v.str()?.to_string()))
    }
}

fn loose<T>(obj: &Bound<'_, PyAny>) -> PyResult<Loose<T>>
where
    T: for<'a, 'py> FromPyObject<'a, 'py>,
{
    match obj.extract::<T>() {
        Ok(v) => Ok(Loose::Ok(v)),
        Err(_) => Ok(Loose::Other(obj.repr()?.to_string())),
    }
}

/// Index of `obj` (by identity) in `list`.
fn index_of(list: &[Py<PyAny>], obj: &Bound<'_, PyAny>) -> Option<usize> {
    list.iter().position(|o| o.bind(obj.py()).is(obj))
}

/// Copy what the runtime's `state` dict holds into plain data and the live objects.
fn gather(
    py: Python<'_>,
    file: &Path,
    state: &Bound<'_, PyDict>,
) -> PyResult<(RawConfig, PyObjects)> {
    let cfg = item(state, "cfg")?;
    let default_router = item(state, "default_direct_message")?;
    let custom_router = !cfg.getattr("direct_message")?.is(&default_router);
    let rescan_interval = At {
        line: setting_line(&cfg, "rescan_interval"),
        value: loose::<f64>(&cfg.getattr("rescan_interval")?)?,
    };
    let db_dir = message_db_dir(py, &cfg)?;
    let (maildirs, maildir_objs) = gather_maildirs(state)?;
    let (accounts, account_objs) = gather_accounts(state)?;
    let (mailboxes, mailbox_objs) = gather_mailboxes(state, &account_objs)?;
    let credential_servers = gather_credential_servers(state, &account_objs)?;

    let raw = RawConfig {
        file: file.to_path_buf(),
        message_db_dir: db_dir,
        maildirs,
        accounts,
        mailboxes,
        credential_servers,
        custom_router,
        rescan_interval,
    };
    let objects = PyObjects {
        maildirs: maildir_objs,
        mailboxes: mailbox_objs,
        cfg: cfg.unbind(),
    };
    Ok((raw, objects))
}

/// Declarations as written, with the objects that made them, in the same
/// order.
type WithObjects<T> = (Vec<At<T>>, Vec<Py<PyAny>>);

/// `cfg.message_db_dir` through `os.fspath`, its `repr` when that fails.
fn message_db_dir(py: Python<'_>, cfg: &Bound<'_, PyAny>) -> PyResult<Loose<String>> {
    let db_dir = cfg.getattr("message_db_dir")?;
    Ok(
        match py.import("os")?.getattr("fspath")?.call1((&db_dir,)) {
            Ok(p) => loose::<String>(&p)?,
            Err(_) => Loose::Other(db_dir.repr()?.to_string()),
        },
    )
}

/// The declared maildirs, with the objects `MailDir(...)` returned.
fn gather_maildirs(state: &Bound<'_, PyDict>) -> PyResult<WithObjects<RawMaildir>> {
    let mut maildir_objs = Vec::new();
    let mut maildirs = Vec::new();
    for m in item(state, "maildirs")?.try_iter()? {
        let m = m?;
        maildirs.push(At {
            line: line_of(&m),
            value: RawMaildir {
                directory: m.getattr("directory")?.extract()?,
            },
        });
        maildir_objs.push(m.unbind());
    }
    Ok((maildirs, maildir_objs))
}

/// The declared accounts, with their objects (mailboxes and credential
/// servers name accounts by identity).
fn gather_accounts(state: &Bound<'_, PyDict>) -> PyResult<WithObjects<RawAccount>> {
    let mut account_objs = Vec::new();
    let mut accounts = Vec::new();
    for a in item(state, "accounts")?.try_iter()? {
        let a = a?;
        accounts.push(At {
            line: line_of(&a),
            value: raw_account(&a)?,
        });
        account_objs.push(a.unbind());
    }
    Ok((accounts, account_objs))
}

/// Copy one `Office365_Account`/`GMail_Account` object's attributes.
fn raw_account(a: &Bound<'_, PyAny>) -> PyResult<RawAccount> {
    let kind: String = a.getattr("_kind")?.extract()?;
    Ok(if kind == "Office365_Account" {
        RawAccount {
            kind: CloudKind::Office365,
            user: opt_str(a, "user")?,
            tenant: opt_str(a, "tenant")?,
            client_id: opt_str(a, "client_id")?,
            use_default_registration: a.getattr("use_default_registration")?.is_truthy()?,
            device_code: a.getattr("device_code")?.is_truthy()?,
        }
    } else {
        RawAccount {
            kind: CloudKind::Gmail,
            user: opt_str(a, "user")?,
            tenant: None,
            client_id: None,
            use_default_registration: false,
            device_code: false,
        }
    })
}

/// The declared cloud mailboxes, with the objects
/// `Office365(...)`/`GMail(...)` returned.
fn gather_mailboxes(
    state: &Bound<'_, PyDict>,
    account_objs: &[Py<PyAny>],
) -> PyResult<WithObjects<RawMailbox>> {
    let mut mailbox_objs = Vec::new();
    let mut mailboxes = Vec::new();
    for b in item(state, "mailboxes")?.try_iter()? {
        let b = b?;
        let kind = match b.getattr("_kind")?.extract::<String>()?.as_str() {
            "Office365" => CloudKind::Office365,
            _ => CloudKind::Gmail,
        };
        let account = index_of(account_objs, &b.getattr("account")?).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err("mailbox account is not a declared account")
        })?;
        let poll = b.getattr("poll_interval")?;
        let poll_interval = if poll.is_none() {
            None
        } else {
            Some(loose::<f64>(&poll)?)
        };
        mailboxes.push(At {
            line: line_of(&b),
            value: RawMailbox {
                kind,
                name: b.getattr("name")?.extract()?,
                account,
                delete_action: loose::<String>(&b.getattr("delete_action")?)?,
                poll_interval,
            },
        });
        mailbox_objs.push(b.unbind());
    }
    Ok((mailboxes, mailbox_objs))
}

/// The declared credential servers, accounts as indexes into `account_objs`.
fn gather_credential_servers(
    state: &Bound<'_, PyDict>,
    account_objs: &[Py<PyAny>],
) -> PyResult<Vec<At<RawCredentialServer>>> {
    let mut credential_servers = Vec::new();
    for s in item(state, "credential_servers")?.try_iter()? {
        let s = s?;
        let mut accts = Vec::new();
        for a in s.getattr("accounts")?.try_iter()? {
            let a = a?;
            if let Some(i) = index_of(account_objs, &a) {
                accts.push(i);
            }
        }
        let mut protocols = Vec::new();
        for p in s.getattr("protocols")?.try_iter()? {
            protocols.push(p?.str()?.to_string());
        }
        credential_servers.push(At {
            line: line_of(&s),
            value: RawCredentialServer {
                path: s.getattr("path")?.extract()?,
                accounts: accts,
                umask: loose::<i64>(&s.getattr("umask")?)?,
                protocols,
            },
        });
    }
    Ok(credential_servers)
}
