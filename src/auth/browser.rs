//! Opening a web browser on a login URL. The caller decides how (the
//! `BROWSER` variable, `xdg-open`, or a test stand-in); this module only
//! defines the hook and a command-running implementation.

use std::process::{Command, Stdio};

/// Opens a URL in a browser the user can see.
pub trait Browser: Send + Sync {
    /// Start opening `url`; must not block. An error means the user has to
    /// open it by hand (the caller logs the URL).
    fn open(&self, url: &str) -> Result<(), String>;
}

/// Never opens anything (headless use: the log and the page tell the URL).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBrowser;

impl Browser for NoBrowser {
    fn open(&self, _url: &str) -> Result<(), String> {
        Err("no browser is configured".to_string())
    }
}

/// Runs browser commands the way Python's `webbrowser` reads `BROWSER`: a
/// `:`-separated list of commands tried in order; a command containing `%s`
/// is split on whitespace with `%s` replaced by the URL, otherwise the whole
/// entry is the program and the URL its only argument. With no `BROWSER`,
/// `xdg-open`.
#[derive(Debug, Clone)]
pub struct CommandBrowser {
    commands: Vec<String>,
}

impl CommandBrowser {
    /// From the value of `BROWSER` (`None` or empty: `xdg-open`).
    pub fn from_env_value(browser: Option<&str>) -> CommandBrowser {
        let mut commands: Vec<String> = browser
            .unwrap_or("")
            .split(':')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        if commands.is_empty() {
            commands.push("xdg-open".to_string());
        }
        CommandBrowser { commands }
    }

    /// The argv each command would run for `url`.
    pub fn argv(&self, url: &str) -> Vec<Vec<String>> {
        self.commands
            .iter()
            .map(|c| {
                if c.contains("%s") {
                    c.split_whitespace().map(|a| a.replace("%s", url)).collect()
                } else {
                    vec![c.clone(), url.to_string()]
                }
            })
            .collect()
    }
}

impl Browser for CommandBrowser {
    fn open(&self, url: &str) -> Result<(), String> {
        let mut errors = Vec::new();
        for argv in self.argv(url) {
            let Some((prog, args)) = argv.split_first() else {
                continue;
            };
            match Command::new(prog)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(mut child) => {
                    // Reap it in the background so no zombie is left.
                    std::thread::spawn(move || {
                        let _ = child.wait();
                    });
                    return Ok(());
                }
                Err(e) => errors.push(format!("{prog}: {e}")),
            }
        }
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_variable() {
        let b = CommandBrowser::from_env_value(Some("firefox --new-window %s:lynx"));
        assert_eq!(
            b.argv("http://x/"),
            vec![
                vec!["firefox", "--new-window", "http://x/"],
                vec!["lynx", "http://x/"]
            ]
        );
        let d = CommandBrowser::from_env_value(None);
        assert_eq!(d.argv("u"), vec![vec!["xdg-open", "u"]]);
        let s = CommandBrowser::from_env_value(Some("/opt/my browser"));
        assert_eq!(s.argv("u"), vec![vec!["/opt/my browser", "u"]]);
    }
}
