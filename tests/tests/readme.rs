//! The README cannot drift: the `sh` blocks of its walkthroughs run in
//! order, in one bash session, against a fresh `paddock dev`.
//!
//! Conventions (also stated in the README, under "Testing the README"):
//! - Every ```` ```sh ```` block under a `## Walkthrough` heading runs; an
//!   HTML comment `<!-- readme-test: skip REASON -->` just before a block
//!   keeps it out, and the reason is required.
//! - In a block with `$ ` prompts, `$ ` lines are commands (a trailing `\`
//!   continues one) and the lines under one are the output it shows; in a
//!   block without prompts every line is a command.
//! - A command must exit 0, unless the output shown starts with a gRPC code
//!   (`PERMISSION_DENIED: ...`), which it must then print on stderr with a
//!   non-zero exit, or with `denied:` (`paddock can`), exit 1. The first
//!   word of the output shown must begin what it prints (the rest of the
//!   output shown is illustrative: ids and times differ).
//! - `export NAME=...` must leave `NAME` non-empty (and not jq's `null`).
//! - A command whose comment says `Ctrl-C` runs until stopped: it passes
//!   if it is still running after a few seconds, and is then interrupted.
//! - The session runs where `paddock-data` is the data dir, with the
//!   endpoint variables of its own `paddock dev` (on free ports), the
//!   workspace's `paddock` and grpcurl on `PATH`. The default addresses
//!   `127.0.0.1:7101`..`7104` in a command become the ones it got.
//! - `<!-- readme-test: image NAME -->` before a block stands the tests'
//!   busybox image in for image `NAME` (there is no registry to pull from):
//!   `NAME:` in the block's commands becomes `paddock-readme-NAME:`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use paddock_e2e::{Backend, Dev, e2e_tests, paddock_bin, test_tool};

/// How long one command may take (a sandbox run on a busy machine).
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// How long a command that runs until Ctrl-C must keep running.
const UNTIL_INTERRUPTED: &str = "3";

/// One command of the README and what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Example {
    /// 1-based line in the README.
    line: usize,
    command: String,
    output: Vec<String>,
}

/// A runnable block: its examples, and the image it stands in for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    line: usize,
    image: Option<String>,
    examples: Vec<Example>,
}

/// The `sh` blocks of the walkthrough sections, skipped ones left out.
fn walkthrough_blocks(readme: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut in_walkthrough = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(heading) = line.strip_prefix("## ") {
            in_walkthrough = heading.starts_with("Walkthrough");
        }
        if !line.starts_with("```") {
            i += 1;
            continue;
        }
        let start = i;
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].starts_with("```"))
            .ok_or_else(|| format!("README.md:{}: unclosed code block", start + 1))?;
        i = end + 1;
        if !in_walkthrough || line.trim_end() != "```sh" {
            continue;
        }
        let directive = lines[..start]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- readme-test:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(str::trim);
        let mut image = None;
        match directive {
            None => {}
            Some(d) if d.starts_with("skip") => {
                if d["skip".len()..].trim().is_empty() {
                    return Err(format!(
                        "README.md:{}: readme-test: skip needs a reason",
                        start + 1
                    ));
                }
                continue;
            }
            Some(d) if d.starts_with("image ") => {
                image = Some(d["image ".len()..].trim().to_owned());
            }
            Some(d) => {
                return Err(format!(
                    "README.md:{}: unknown readme-test directive {d:?}",
                    start + 1
                ));
            }
        }
        let examples = examples(&lines[start + 1..end], start + 2)?;
        blocks.push(Block {
            line: start + 1,
            image,
            examples,
        });
    }
    Ok(blocks)
}

/// The commands of one block (`first` is the README line of `body[0]`).
fn examples(body: &[&str], first: usize) -> Result<Vec<Example>, String> {
    let prompts = body.iter().any(|l| l.starts_with("$ "));
    let mut out: Vec<Example> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let line = body[i];
        let line_no = first + i;
        i += 1;
        let command = if prompts {
            match line.strip_prefix("$ ") {
                Some(c) => c,
                None if line.trim().is_empty() => continue,
                None => match out.last_mut() {
                    Some(example) => {
                        example.output.push(line.to_owned());
                        continue;
                    }
                    None => {
                        return Err(format!(
                            "README.md:{line_no}: output before any `$ ` command"
                        ));
                    }
                },
            }
        } else if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        } else {
            line
        };
        let mut command = command.to_owned();
        while command.ends_with('\\') && i < body.len() {
            command.push('\n');
            command.push_str(body[i]);
            i += 1;
        }
        out.push(Example {
            line: line_no,
            command,
            output: Vec::new(),
        });
    }
    Ok(out)
}

/// What a command must do, from the output the README shows.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Exit 0; stdout starts with this word, if any is shown.
    Success(Option<String>),
    /// Non-zero exit, stderr starting with `CODE:`.
    Error(String),
    /// `paddock can` refusing: exit 1.
    Denied,
}

fn expectation(output: &[String]) -> Expect {
    let Some(first) = output.iter().find(|l| !l.trim().is_empty()) else {
        return Expect::Success(None);
    };
    let word = first.split_whitespace().next().unwrap_or_default();
    if word == "denied:" {
        return Expect::Denied;
    }
    match word.strip_suffix(':') {
        Some(code)
            if code.len() > 2 && code.chars().all(|c| c.is_ascii_uppercase() || c == '_') =>
        {
            Expect::Error(code.to_owned())
        }
        _ => Expect::Success(Some(word.to_owned())),
    }
}

/// The tests' busybox image under the name a block stands it in for.
fn stand_in_image(name: &str) -> String {
    let tag = format!("paddock-readme-{name}");
    let source = paddock_testkit::image::busybox_image();
    let status = Command::new("docker")
        .args(["tag", source, &tag])
        .status()
        .expect("run docker tag");
    assert!(status.success(), "docker tag {source} {tag} failed");
    format!("paddock-readme-{}", name.split(':').next().unwrap_or(name))
}

/// A bash session fed one command at a time.
struct Session {
    bash: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    dir: PathBuf,
    count: usize,
}

/// What one command did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Session {
    fn start(dev: &Dev) -> Session {
        let root = dev.root();
        std::os::unix::fs::symlink("data", root.join("paddock-data"))
            .expect("link paddock-data to the data dir");
        let dir = root.join("readme-test");
        std::fs::create_dir_all(&dir).expect("create the session dir");
        let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .collect::<Vec<_>>();
        for tool in [paddock_bin(), &test_tool("grpcurl-1.8.6/grpcurl")] {
            path.insert(0, tool.parent().expect("a tool dir").to_path_buf());
        }
        let mut bash = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .current_dir(root)
            .env("PATH", std::env::join_paths(path).expect("PATH"))
            .env("PADDOCK_IDENTITY_ENDPOINT", &dev.identity_endpoint)
            .env("PADDOCK_AUTHZ_ENDPOINT", &dev.authz_endpoint)
            .env("PADDOCK_AUDIT_ENDPOINT", &dev.audit_endpoint)
            .env("PADDOCK_SANDBOX_ENDPOINT", &dev.sandbox_endpoint)
            .env("HOME", root)
            // The config `paddock dev` wrote its `dev` context to.
            .env("XDG_CONFIG_HOME", dev.config_home())
            .env_remove("PADDOCK_TOKEN")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("bash.stderr")).expect("create bash.stderr"),
            ))
            .spawn()
            .expect("spawn bash");
        let stdin = bash.stdin.take().expect("bash stdin");
        let stdout = bash.stdout.take().expect("bash stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut session = Session {
            bash,
            stdin,
            lines,
            dir,
            count: 0,
        };
        session.send("set -o pipefail");
        session
    }

    fn send(&mut self, script: &str) {
        writeln!(self.stdin, "{script}").expect("write to bash");
        self.stdin.flush().expect("flush to bash");
    }

    /// Runs `command` in the session (its exports stay) and waits for it.
    fn run(&mut self, command: &str) -> Result<Ran, String> {
        self.count += 1;
        let out = self.dir.join(format!("{}.out", self.count));
        let err = self.dir.join(format!("{}.err", self.count));
        self.send(&format!(
            "{{ {command}\n}} >'{}' 2>'{}' </dev/null\necho \"__rc $?\"",
            out.display(),
            err.display()
        ));
        let code = self.wait_rc()?;
        Ok(Ran {
            code,
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        })
    }

    fn wait_rc(&mut self) -> Result<i32, String> {
        loop {
            match self.lines.recv_timeout(COMMAND_DEADLINE) {
                Ok(line) => {
                    if let Some(rc) = line.strip_prefix("__rc ") {
                        return rc.trim().parse().map_err(|e| format!("bad rc {rc:?}: {e}"));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no answer within {COMMAND_DEADLINE:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "bash exited: {}",
                        std::fs::read_to_string(self.dir.join("bash.stderr")).unwrap_or_default()
                    ));
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.bash.kill();
        let _ = self.bash.wait();
    }
}

/// `'text'` for bash.
fn single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Rewrites a README command for this stack: its addresses, its image.
fn localize(command: &str, dev: &Dev, image: Option<(&str, &str)>) -> String {
    let mut command = command.to_owned();
    for (port, endpoint) in [
        (7101, &dev.identity_endpoint),
        (7102, &dev.authz_endpoint),
        (7103, &dev.sandbox_endpoint),
        (7104, &dev.audit_endpoint),
    ] {
        let addr = endpoint.strip_prefix("http://").unwrap_or(endpoint);
        command = command.replace(&format!("127.0.0.1:{port}"), addr);
    }
    if let Some((name, stand_in)) = image {
        let repo = name.split(':').next().unwrap_or(name);
        command = command.replace(&format!("{repo}:"), &format!("{stand_in}:"));
    }
    command
}

/// Runs one example; `Err` says what differs from the README.
fn check(session: &mut Session, example: &Example, command: &str) -> Result<(), String> {
    let until_interrupted = command
        .lines()
        .last()
        .and_then(|l| l.split_once(" #"))
        .is_some_and(|(_, comment)| comment.contains("Ctrl-C"));
    if until_interrupted {
        let ran = session.run(&format!(
            "timeout -s INT {UNTIL_INTERRUPTED} bash -c {}",
            single_quoted(command)
        ))?;
        return if ran.code == 124 {
            Ok(())
        } else {
            Err(format!("ended (exit {}) before Ctrl-C: {ran:#?}", ran.code))
        };
    }
    let ran = session.run(command)?;
    match expectation(&example.output) {
        Expect::Success(word) => {
            if ran.code != 0 {
                return Err(format!("exit {}: {ran:#?}", ran.code));
            }
            if let Some(word) = word {
                let first = ran.stdout.split_whitespace().next().unwrap_or_default();
                if first != word {
                    return Err(format!(
                        "the README shows output starting with {word:?}, got {first:?}: {ran:#?}"
                    ));
                }
            }
        }
        Expect::Error(code) => {
            if ran.code == 0 || !ran.stderr.starts_with(&format!("{code}: ")) {
                return Err(format!(
                    "the README shows a {code} error, got exit {}: {ran:#?}",
                    ran.code
                ));
            }
        }
        Expect::Denied => {
            if ran.code != 1 || !ran.stdout.starts_with("denied:") {
                return Err(format!(
                    "the README shows a denial (exit 1), got exit {}: {ran:#?}",
                    ran.code
                ));
            }
        }
    }
    if let Some(name) = exported_name(command) {
        let ran = session.run(&format!(
            "[ -n \"${{{name}:-}}\" ] && [ \"${name}\" != null ]"
        ))?;
        if ran.code != 0 {
            return Err(format!("left {name} empty"));
        }
    }
    Ok(())
}

/// `NAME` of `export NAME=...`.
fn exported_name(command: &str) -> Option<&str> {
    let rest = command.strip_prefix("export ")?;
    let (name, _) = rest.split_once('=')?;
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(name)
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn readme_walkthrough_runs_as_written(backend: Backend) {
    let blocks = walkthrough_blocks(&readme()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        blocks.iter().map(|b| b.examples.len()).sum::<usize>() > 20,
        "found too few walkthrough commands in README.md: {blocks:#?}"
    );
    let dev = Dev::start(backend);
    let mut session = Session::start(&dev);
    for block in &blocks {
        let stand_in = block
            .image
            .as_deref()
            .map(|name| (name, stand_in_image(name)));
        for example in &block.examples {
            let command = localize(
                &example.command,
                &dev,
                stand_in.as_ref().map(|(n, s)| (*n, s.as_str())),
            );
            if let Err(e) = check(&mut session, example, &command) {
                panic!(
                    "README.md:{} (block at line {}): `{}`: {e}",
                    example.line, block.line, example.command
                );
            }
        }
    }
}

e2e_tests!(readme_walkthrough_runs_as_written);

#[test]
fn blocks_and_examples_are_parsed_by_the_conventions() {
    let readme = "\
## Set up
```sh
not run
```
## Walkthrough: one
```sh
$ first --flag \\
    continued
created x
more output

$ second   # comment
PERMISSION_DENIED: missing
```
<!-- readme-test: skip needs something -->
```sh
skipped
```
<!-- readme-test: image node:22 -->
```sh
# a comment
plain one
plain two
```
## Other
```sh
not run either
```
";
    let blocks = walkthrough_blocks(readme).expect("parses");
    assert_eq!(blocks.len(), 2, "{blocks:#?}");
    assert_eq!(blocks[0].examples.len(), 2);
    assert_eq!(
        blocks[0].examples[0].command,
        "first --flag \\\n    continued"
    );
    assert_eq!(blocks[0].examples[0].line, 7);
    assert_eq!(
        expectation(&blocks[0].examples[0].output),
        Expect::Success(Some("created".to_owned()))
    );
    assert_eq!(
        expectation(&blocks[0].examples[1].output),
        Expect::Error("PERMISSION_DENIED".to_owned())
    );
    assert_eq!(blocks[1].image.as_deref(), Some("node:22"));
    let commands: Vec<&str> = blocks[1]
        .examples
        .iter()
        .map(|e| e.command.as_str())
        .collect();
    assert_eq!(commands, ["plain one", "plain two"]);
    assert_eq!(
        expectation(&["denied: x".to_owned()]),
        Expect::Denied,
        "paddock can"
    );
    assert_eq!(expectation(&[]), Expect::Success(None));

    assert!(
        walkthrough_blocks("## Walkthrough\n<!-- readme-test: skip -->\n```sh\nx\n```\n").is_err()
    );
    assert!(walkthrough_blocks("## Walkthrough\n```sh\noutput\n$ cmd\n```\n").is_err());
    assert!(
        walkthrough_blocks("## Walkthrough\n<!-- readme-test: nope -->\n```sh\nx\n```\n").is_err()
    );
    assert_eq!(exported_name("export SB=$(x)"), Some("SB"));
    assert_eq!(exported_name("paddock x"), None);
}
