//! The Python actor: one dedicated OS thread owns every call into the
//! embedded interpreter. Other threads send it closures through a channel and
//! never hold the interpreter themselves (tokio workers stay free).

use std::sync::mpsc;
use std::thread;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// Source of the config runtime loaded into the interpreter.
const RUNTIME_SOURCE: &str = include_str!("../../python/cms_runtime.py");

type Job = Box<dyn FnOnce(Python<'_>) + Send + 'static>;

/// Handle to the Python thread; cheap to clone, the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct PyActor {
    tx: mpsc::Sender<Job>,
}

/// The Python thread has stopped (it panicked, or the process is exiting).
#[derive(Debug, thiserror::Error)]
#[error("the Python thread has stopped")]
pub struct ActorGone;

impl PyActor {
    /// Start the thread. The interpreter is initialised on first use.
    pub fn spawn() -> PyActor {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("python".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    Python::attach(job);
                }
            })
            .expect("spawning the Python thread");
        PyActor { tx }
    }

    /// Run `f` on the Python thread and wait for its result (blocking).
    pub fn call<R, F>(&self, f: F) -> Result<R, ActorGone>
    where
        R: Send + 'static,
        F: FnOnce(Python<'_>) -> R + Send + 'static,
    {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.tx
            .send(Box::new(move |py| {
                let _ = rtx.send(f(py));
            }))
            .map_err(|_| ActorGone)?;
        rrx.recv().map_err(|_| ActorGone)
    }

    /// Run `f` on the Python thread; the future resolves with its result
    /// without blocking the async worker.
    pub async fn call_async<R, F>(&self, f: F) -> Result<R, ActorGone>
    where
        R: Send + 'static,
        F: FnOnce(Python<'_>) -> R + Send + 'static,
    {
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move |py| {
                let _ = rtx.send(f(py));
            }))
            .map_err(|_| ActorGone)?;
        rrx.await.map_err(|_| ActorGone)
    }
}

/// Import (once per interpreter) the config runtime module.
pub fn runtime_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    // Two threads may race here (tests load configs in parallel); the lock
    // makes every caller see the one fully executed module.
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || {
        let code = std::ffi::CString::new(RUNTIME_SOURCE).expect("runtime source has no NUL");
        PyModule::from_code(py, &code, c"cms_runtime.py", c"cms_runtime").map(Bound::unbind)
    })?;
    Ok(m.bind(py).clone())
}

/// The formatted traceback of a Python error (type, message and frames).
pub fn format_pyerr(py: Python<'_>, err: &PyErr) -> String {
    let tb = err
        .traceback(py)
        .and_then(|tb| pyo3::types::PyTracebackMethods::format(&tb).ok())
        .unwrap_or_default();
    format!("{tb}{err}")
}
