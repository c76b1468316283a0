//! Routing cloud messages to maildirs through the config's
//! `cfg.direct_message(msg)`. Calls run on the Python thread, one batch per
//! pass; results are memoised on everything the message object exposes, so a
//! pass in which nothing changed calls no Python at all. A filter that fails
//! yields a [`RouteError`] for that message (the caller leaves the message
//! where it is); each distinct failure is logged once with its traceback.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::prelude::*;

use super::headers::HeaderBlock;
use super::python::{PyActor, format_pyerr};
use super::raw::PyObjects;
use crate::types::{ContentHash, Flags};

/// One message to route, with everything `msg` exposes to the filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteRequest {
    /// Index of the cloud mailbox (declaration order).
    pub mailbox: usize,
    /// Content identity.
    pub content_hash: ContentHash,
    /// The cloud's id for the message.
    pub storage_id: String,
    /// Message-ID, when the cloud reported one.
    pub email_id: Option<String>,
    /// Cloud flags.
    pub flags: Flags,
    /// Received time, seconds since the epoch (UTC).
    pub received_time: Option<i64>,
    /// Size in bytes.
    pub size: u64,
    /// Where the content can be read (the store's blob).
    pub content_path: PathBuf,
}

/// Why a message could not be routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The filter raised, returned a non-MailDir, or is not callable.
    #[error("direct_message: {0}")]
    Filter(String),
    /// The Python thread is gone.
    #[error("the Python thread has stopped")]
    ActorGone,
}

/// Header values already looked up, by (content, lower-case name).
type HeaderValues = Arc<Mutex<HashMap<(ContentHash, String), Option<String>>>>;

type MemoKey = (
    usize,
    ContentHash,
    String,
    Option<String>,
    u8,
    Option<i64>,
    u64,
);

/// Routing passes a memo entry (and the header values of its content)
/// outlives the last pass that asked for it: a message that left the cloud,
/// or whose flags changed, is forgotten.
const MEMO_PASSES: u64 = 2;

struct State {
    objects: PyObjects,
    /// The answer per message, with the last pass that asked for it.
    memo: HashMap<MemoKey, (Result<usize, String>, u64)>,
    /// Routing passes so far.
    passes: u64,
    logged: HashSet<String>,
    header_values: HeaderValues,
    python_calls: u64,
}

/// Routes messages to maildir indexes (declaration order of `MailDir`).
#[derive(Clone)]
pub struct Router {
    actor: PyActor,
    custom: bool,
    state: Arc<Mutex<State>>,
}

impl Router {
    /// A router over the objects a loaded config created.
    pub fn new(actor: PyActor, objects: PyObjects, custom: bool) -> Router {
        Router {
            actor,
            custom,
            state: Arc::new(Mutex::new(State {
                objects,
                memo: HashMap::new(),
                passes: 0,
                logged: HashSet::new(),
                header_values: Arc::new(Mutex::new(HashMap::new())),
                python_calls: 0,
            })),
        }
    }

    /// True when the config has its own `direct_message`.
    pub fn is_custom(&self) -> bool {
        self.custom
    }

    /// How many times `direct_message` was actually called (memo misses).
    pub fn python_calls(&self) -> u64 {
        self.state.lock().map(|s| s.python_calls).unwrap_or(0)
    }

    /// Messages the memo holds (for tests and status).
    pub fn memo_len(&self) -> usize {
        self.state.lock().map(|s| s.memo.len()).unwrap_or(0)
    }

    /// Forget the answers for messages that left the cloud, as (mailbox,
    /// storage id).
    pub fn forget(&self, gone: &[(usize, String)]) {
        if gone.is_empty() {
            return;
        }
        let gone: HashSet<(usize, &str)> = gone.iter().map(|(m, id)| (*m, id.as_str())).collect();
        let mut st = crate::lock::lock(&self.state);
        st.memo.retain(|k, _| !gone.contains(&(k.0, k.2.as_str())));
    }

    /// Route a batch; one result per request, in order. Answers not asked
    /// for in the last two batches are forgotten, so the memo holds what
    /// the cloud lists, not everything it ever listed.
    pub async fn route(&self, batch: Vec<RouteRequest>) -> Vec<Result<usize, RouteError>> {
        if !self.custom {
            return batch.iter().map(|_| Ok(0)).collect();
        }
        let n = batch.len();
        let state = self.state.clone();
        match self
            .actor
            .call_async(move |py| route_on_thread(py, &state, batch))
            .await
        {
            Ok(v) => v,
            Err(_) => vec![Err(RouteError::ActorGone); n],
        }
    }
}

fn route_on_thread(
    py: Python<'_>,
    state: &Mutex<State>,
    batch: Vec<RouteRequest>,
) -> Vec<Result<usize, RouteError>> {
    let mut st = crate::lock::lock(state);
    let func = match st.objects.cfg.bind(py).getattr("direct_message") {
        Ok(f) => f,
        Err(e) => {
            let msg = format!("cannot read cfg.direct_message: {e}");
            return batch
                .iter()
                .map(|_| Err(RouteError::Filter(msg.clone())))
                .collect();
        }
    };
    let callable = func.is_callable();
    st.passes += 1;
    let pass = st.passes;
    let mut out = Vec::with_capacity(batch.len());
    for req in batch {
        let key: MemoKey = (
            req.mailbox,
            req.content_hash,
            req.storage_id.clone(),
            req.email_id.clone(),
            req.flags.0,
            req.received_time,
            req.size,
        );
        if let Some((r, seen)) = st.memo.get_mut(&key) {
            *seen = pass;
            out.push(r.clone().map_err(RouteError::Filter));
            continue;
        }
        let result = if !callable {
            let repr = func.repr().map(|r| r.to_string()).unwrap_or_default();
            Err((
                format!("cfg.direct_message is not callable: {repr}"),
                String::new(),
            ))
        } else {
            st.python_calls += 1;
            call_filter(py, &st, &func, &req)
        };
        let result = match result {
            Ok(i) => Ok(i),
            Err((msg, tb)) => {
                if st.logged.insert(msg.clone()) {
                    tracing::error!(
                        storage_id = %req.storage_id,
                        "direct_message failed; the message stays where it is: {msg}\n{tb}"
                    );
                }
                Err(msg)
            }
        };
        st.memo.insert(key, (result.clone(), pass));
        out.push(result.map_err(RouteError::Filter));
    }
    forget_old(&mut st, pass);
    out
}

/// Drop memo entries no recent pass asked for, and the header values of
/// content no remaining entry holds.
fn forget_old(st: &mut State, pass: u64) {
    st.memo.retain(|_, (_, seen)| *seen + MEMO_PASSES > pass);
    let live: HashSet<ContentHash> = st.memo.keys().map(|k| k.1).collect();
    if let Ok(mut values) = st.header_values.lock() {
        values.retain(|(hash, _), _| live.contains(hash));
    }
}

fn call_filter(
    py: Python<'_>,
    st: &State,
    func: &Bound<'_, PyAny>,
    req: &RouteRequest,
) -> Result<usize, (String, String)> {
    let mailbox = match st.objects.mailboxes.get(req.mailbox) {
        Some(m) => m.clone_ref(py),
        None => return Err((format!("no cloud mailbox #{}", req.mailbox), String::new())),
    };
    let msg = Message {
        mailbox,
        req: req.clone(),
        headers: OnceLock::new(),
        values: st.header_values.clone(),
    };
    let ret = Bound::new(py, msg).and_then(|m| func.call1((m,)));
    match ret {
        Ok(obj) => {
            if let Some(i) = st.objects.maildirs.iter().position(|m| m.bind(py).is(&obj)) {
                Ok(i)
            } else {
                let repr = obj.repr().map(|r| r.to_string()).unwrap_or_default();
                Err((
                    format!("returned {repr}, which is not a MailDir"),
                    String::new(),
                ))
            }
        }
        Err(e) => Err((e.to_string(), format_pyerr(py, &e))),
    }
}

/// The `msg` object a config's `direct_message` receives.
#[pyclass(name = "Message", module = "cms_runtime", frozen)]
struct Message {
    mailbox: Py<PyAny>,
    req: RouteRequest,
    headers: OnceLock<Result<HeaderBlock, String>>,
    values: HeaderValues,
}

impl Message {
    fn header(&self, name: &str) -> PyResult<Option<String>> {
        let key = (self.req.content_hash, name.to_ascii_lowercase());
        if let Some(v) = self.values.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(v);
        }
        let block = self.headers.get_or_init(|| {
            HeaderBlock::read_file(&self.req.content_path)
                .map_err(|e| format!("{}: {e}", self.req.content_path.display()))
        });
        match block {
            Ok(b) => {
                let v = b.get(name);
                if let Ok(mut m) = self.values.lock() {
                    m.insert(key, v.clone());
                }
                Ok(v)
            }
            Err(e) => Err(pyo3::exceptions::PyOSError::new_err(e.clone())),
        }
    }
}

#[pymethods]
impl Message {
    #[classattr]
    const FLAG_REPLIED: u8 = 1;
    #[classattr]
    const FLAG_READ: u8 = 2;
    #[classattr]
    const FLAG_FLAGGED: u8 = 4;
    #[classattr]
    const FLAG_DELETED: u8 = 8;

    /// The first value of header `name`, unfolded and stripped, or None.
    fn get_header(&self, name: &str) -> PyResult<Option<String>> {
        self.header(name)
    }

    /// The cloud mailbox object the message comes from.
    #[getter]
    fn mailbox(&self, py: Python<'_>) -> Py<PyAny> {
        self.mailbox.clone_ref(py)
    }

    /// Message-ID (from the cloud, else from the header).
    #[getter]
    fn email_id(&self) -> PyResult<Option<String>> {
        match &self.req.email_id {
            Some(id) => Ok(Some(id.clone())),
            None => self.header("message-id"),
        }
    }

    /// The flag bits.
    #[getter]
    fn flags(&self) -> u8 {
        self.req.flags.0
    }

    /// Hex content hash.
    #[getter]
    fn content_hash(&self) -> String {
        self.req.content_hash.to_hex()
    }

    /// The cloud's id for the message.
    #[getter]
    fn storage_id(&self) -> String {
        self.req.storage_id.clone()
    }

    /// Size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.req.size
    }

    /// Received time as a naive UTC datetime (None when unknown).
    #[getter]
    fn received_time<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(ts) = self.req.received_time else {
            return Ok(None);
        };
        let dt = py.import("datetime")?;
        let utc = dt.getattr("timezone")?.getattr("utc")?;
        let aware = dt
            .getattr("datetime")?
            .call_method1("fromtimestamp", (ts, utc))?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("tzinfo", py.None())?;
        Ok(Some(aware.call_method("replace", (), Some(&kwargs))?))
    }

    fn __repr__(&self) -> String {
        format!("<Message {}>", self.req.storage_id)
    }
}
