"""Executable documentation: every command in README.md and docs/ runs in the test suite as it is
written there (Sybil finds the blocks; conftest.py at the repository root hands them to pytest).

Each page runs as a new user would follow it: a home folder of its own (HOME) with the clone
at ~/backorigin (a copy of this working tree whose .venv is this one's, so `make run` does not
install again), a shell that keeps its folder and variables from one block to the next, the
virtualenv only where the page activates it, and, unless the page says `network`, a network
namespace of its own, so the documented ports (8080, 8333, 8000...) are free and the commands
need no rewriting. What the blocks say:

- ```console: each `$ command` runs in the page's shell (a line ending in `\\` or a heredoc goes
  on); the lines after it are what it must print (`...` stands for anything, within a line or for
  whole lines). It must exit 0, unless the next command is `echo $?`, which shows its status.
- ```bash / ```sh: a script run whole in the page's shell; it must exit 0.
- ```python: run with the page's `python`; with `title="FILE"` it is written to FILE instead.
- ```json / ```yaml: parsed, and a rules document is loaded as the addon loads it; with
  `title="FILE"` only parsed, and written to FILE for the commands that follow.
- <!-- test: background "TEXT" --> before a console block: its one command starts in a terminal
  of its own (a pseudo-terminal, as a user's), and the page goes on once TEXT appears there.
- <!-- test: wait "TEXT" -->: the reader waits until TEXT appears in the last terminal started
  that still runs.
- <!-- test: ctrl-c --> presses Ctrl-C in the last terminal started that still runs; it must exit 0.
- <!-- test: not run, REASON --> before a block: checked, not run (a Kubernetes cluster, root on
  the reader's machine...): YAML and JSON parse, `backorigin` command lines parse with the
  command's own parser, and mitmdump's and mitmweb's --help know each --flag given.
- <!-- test: network --> before a block: the block needs the package index (pip install), so it
  runs outside the page's network namespace, in the page's folder with its variables (a `cd` or
  `export` in it does not carry over).
"""

from __future__ import annotations

import base64
import doctest
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sybil import Example, Region
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, RawFencedCodeBlockLexer

REPO = Path(__file__).resolve().parent.parent
CLONE = "backorigin"  # the clone's folder in the page's home, as the getting-started page makes it
COMMAND_TIMEOUT = 300.0
READY_TIMEOUT = 180.0
_FENCE_INFO = re.compile(r'(?P<language>[\w+-]*)(?:[ \t]+title="(?P<title>[^"]+)")?[^\n]*$\n', re.MULTILINE)
_MARK = "__docs_test_done__"


# the page's world: home, clone, network namespace, shell ----------------------------------------


def clone_of_working_tree(into: Path) -> Path:
    """The files git knows or would add (not ignored), copied with their times (make compares
    them), and .venv pointing at this tree's virtualenv."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    (into / ".venv").symlink_to(REPO / ".venv")
    return into


class Namespace:
    """A network namespace held open by a sleeping process; commands enter it with nsenter."""

    def __init__(self) -> None:
        rootless = os.geteuid() != 0
        self.holder = subprocess.Popen(["unshare", "-rn" if rootless else "-n", "sleep", "infinity"])
        self.enter = ["nsenter", "-t", str(self.holder.pid), "-n", *(["-U", "--preserve-credentials"] if rootless else [])]
        # until unshare has made the namespace, the holder is still in ours: entering it then would
        # run the page on this machine's own network (and bring up this machine's lo)
        ours, deadline = os.readlink("/proc/self/ns/net"), time.monotonic() + 10
        while self._namespace() in (ours, None):
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("cannot make a network namespace (unshare -n); the docs' commands need one")
            time.sleep(0.01)
        subprocess.run([*self.enter, "ip", "link", "set", "lo", "up"], check=True, timeout=30)

    def _namespace(self) -> str | None:
        try:
            return os.readlink(f"/proc/{self.holder.pid}/ns/net")
        except OSError:
            return None

    def close(self) -> None:
        """End every process still in the namespace (the demo's proxy and store run in sessions of
        their own, so a terminal's process group does not hold them all), then the holder."""
        ours = self._namespace()
        host = ours in (None, os.readlink("/proc/self/ns/net"))  # never: __init__ waited for a namespace of its own
        for entry in [] if host else Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.holder.pid:
                try:
                    if os.readlink(entry / "ns" / "net") == ours:
                        os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass  # gone meanwhile, or not ours to read
        self.holder.kill()
        self.holder.wait()


@dataclass
class Terminal:
    """A command in a pseudo-terminal of its own, as a user's second terminal: Ctrl-C there sends
    SIGINT to its foreground process group, exactly as a keyboard would."""

    command: str
    process: subprocess.Popen
    master: int
    output: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, command: str, enter: list[str], env: dict[str, str], cwd: str) -> Terminal:
        master, slave = pty.openpty()

        def controlling_terminal() -> None:  # runs in the child, after setsid
            import fcntl
            import termios

            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        process = subprocess.Popen([*enter, "bash", "-c", command], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                   start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)
        terminal = cls(command, process, master)
        threading.Thread(target=terminal._read, daemon=True).start()
        return terminal

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if ready:
                    chunk = os.read(self.master, 65536)
                    if not chunk:
                        return
                    with self.lock:
                        self.output.append(chunk.decode(errors="replace").replace("\r", ""))
                elif self.process.poll() is not None:
                    return
            except OSError:
                return

    def text(self) -> str:
        with self.lock:
            if len(self.output) > 1:
                self.output[:] = ["".join(self.output)]
            return self.output[0] if self.output else ""

    def wait_for(self, ready: str, within: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + within
        while ready not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(f"`{self.command}` exited with {self.process.returncode} before printing "
                                     f"{ready!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"`{self.command}` did not print {ready!r} within {within:g}s:\n{self.text()}")
            time.sleep(0.1)

    def ctrl_c(self, within: float = 120.0) -> int:
        os.write(self.master, b"\x03")
        try:
            return self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`{self.command}` did not stop within {within:g}s of Ctrl-C:\n{self.text()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Page:
    """One documentation page's world: its home, its clone, its namespace, its shell."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = Path(tempfile.mkdtemp(prefix=f"docs-{path.stem}-"))
        self.home = self.root / "home"
        self.home.mkdir()
        clone_of_working_tree(self.home / CLONE)
        self.env = {
            "HOME": str(self.home), "PATH": clean_path(), "LANG": "C.UTF-8", "TERM": "dumb", "PYTHONDONTWRITEBYTECODE": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            # the machine's download cache, as a reader's own home has one: a page's HOME is new each time
            "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"),
            "VIRTUAL_ENV_DISABLE_PROMPT": "1",  # activate's "(.venv) " prompt is not what a command prints
            **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},  # the machine's package index settings
        }
        self.namespace = Namespace()
        self.enter = self.namespace.enter
        self.terminals: list[Terminal] = []
        # the page's own terminal: commands behave as at a prompt (curl shows no progress meter...)
        # an interactive shell, as at a prompt, without prompts, echo or history expansion of `!`
        (self.root / "bashrc").write_text("PS1=''\nPS2=''\nset +H\n")
        self.shell = Terminal.start(f"stty -echo; exec bash --noprofile --rcfile {self.root / 'bashrc'}", self.enter, self.env,
                                    str(self.home / CLONE))
        self.next: dict[str, str] = {}  # what the last directive said about the next block

    # the shell ------------------------------------------------------------------------------

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Run `command` in the page's shell; its exit status and what it printed (stdout and stderr)."""
        start = len(self.shell.text())
        # the status is printed, then set again, so that a following `echo $?` shows the command's
        os.write(self.shell.master, f"{command}\n__s=$?; printf '\\n{_MARK} %s\\n' $__s; (exit $__s)\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            text = self.shell.text()[start:]
            found = re.search(rf"\n{_MARK} (\d+)\n", text)
            if found:  # what a reader sees: without the terminal's colours and bold
                return int(found.group(1)), re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text[:found.start()])
            if self.shell.process.poll() is not None:
                raise AssertionError(f"the page's shell ended during `{command}`:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"`{command}` did not finish within {timeout:g}s:\n{text}")
            time.sleep(0.02)

    def running_terminal(self) -> Terminal:
        """The terminal started last among those still running: where the reader presses Ctrl-C."""
        running = [terminal for terminal in self.terminals if terminal.process.poll() is None]
        assert running, "no terminal of the page is running"
        return running[-1]

    def cwd(self) -> str:
        """The page's shell's folder; marked, as the terminal may still echo a page's first command."""
        status, text = self.run("printf '<cwd>%s</cwd>' \"$(pwd | base64 -w0)\"")
        found = re.search(r"<cwd>([A-Za-z0-9+/=]*)</cwd>", text)
        assert status == 0 and found, f"cannot read the page's folder: {text!r}"
        return base64.b64decode(found.group(1)).decode().strip()

    def environment(self) -> dict[str, str]:
        """The page's shell's variables now (a user's `export` and `source .venv/bin/activate` included)."""
        status, text = self.run("printf '<env>%s</env>' \"$(env -0 | base64 -w0)\"")
        found = re.search(r"<env>([A-Za-z0-9+/=]*)</env>", text)
        assert status == 0 and found, f"cannot read the page's environment: {text!r}"
        pairs = base64.b64decode(found.group(1)).decode(errors="replace").split("\0")
        return dict(pair.split("=", 1) for pair in pairs if "=" in pair)

    def close(self) -> None:
        failures = []
        for terminal in self.terminals:
            if terminal.process.poll() is None:
                failures.append(f"`{terminal.command}` was still running at the end of the page (no Ctrl-C for it)")
                terminal.kill()
        self.shell.kill()
        self.namespace.close()
        if not os.environ.get("DOCS_KEEP"):  # DOCS_KEEP=1: keep the page's folders to look at
            shutil.rmtree(self.root, ignore_errors=True)
        assert not failures, "\n".join(failures)


def clean_path() -> str:
    """PATH without any virtualenv's bin: the pages activate the virtualenv themselves."""
    parts = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(p for p in parts if not (Path(p) / "activate").exists() and not (Path(p).parent / "pyvenv.cfg").exists())


# the blocks -----------------------------------------------------------------------------------


def console_commands(source: str) -> Iterator[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of a console block."""
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            i += 1
            continue
        command = [line[2:]]
        i += 1
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
        while command[-1].endswith("\\") and i < len(lines):
            command.append(lines[i])
            i += 1
        if heredoc:
            while i < len(lines) and lines[i] != heredoc.group(1):
                command.append(lines[i])
                i += 1
            command.append(lines[i] if i < len(lines) else heredoc.group(1))
            i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        yield "\n".join(command), expected


_CHECKER = doctest.OutputChecker()


def check_output(command: str, expected: list[str], got: str) -> None:
    want = "\n".join(expected).strip()
    if not want:
        return
    if not _CHECKER.check_output(want + "\n", got.strip() + "\n", doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE):
        raise AssertionError(f"`{command}` printed:\n{got}\nThe page says it prints:\n{want}")


def evaluate_console(page: Page, source: str) -> None:
    commands = list(console_commands(source))
    if page.next.pop("background", None) is not None:
        ready = page.next.pop("ready")
        assert len(commands) == 1, "a block started in the background has one command"
        terminal = Terminal.start(commands[0][0], page.enter, page.environment(), page.cwd())
        page.terminals.append(terminal)
        terminal.wait_for(ready)
        return
    for index, (command, expected) in enumerate(commands):
        status, output = page.run(command)
        shows_status = index + 1 < len(commands) and commands[index + 1][0].strip() == "echo $?"
        if status != 0 and not shows_status:
            raise AssertionError(f"`{command}` exited with {status}:\n{output}")
        check_output(command, expected, output)


def run_outside(page: Page, language: str, source: str) -> None:
    """A block that needs the package index: its commands run outside the namespace, one shell
    for the block, in the page's folder with the page's variables."""
    assert language == "console", "a network block is a console block"
    env, cwd = page.environment(), page.cwd()
    for command, expected in console_commands(source):
        done = subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if done.returncode != 0:
            raise AssertionError(f"`{command}` exited with {done.returncode}:\n{done.stdout}{done.stderr}")
        check_output(command, expected, done.stdout + done.stderr)


def evaluate_script(page: Page, source: str) -> None:
    status, output = page.run(source)
    if status != 0:
        raise AssertionError(f"the script exited with {status}:\n{source}\nIt printed:\n{output}")


def write_file(page: Page, title: str, source: str) -> None:
    target = Path(title).expanduser() if title.startswith("~") else Path(page.cwd()) / title
    if title.startswith("~"):
        target = page.home / Path(title).relative_to("~")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source, encoding="utf-8")


def check_data(language: str, source: str) -> None:
    if language == "json":
        document = json.loads(source)
        if isinstance(document, dict) and "Buckets" in document:
            from backorigin.rules.model import MAX_RULES_CEILING
            from backorigin.rules.parsing import parse_rules

            parse_rules(source, "the page's rules", MAX_RULES_CEILING)
    elif language == "yaml":
        list(yaml.safe_load_all(source))


def check_not_run(language: str, source: str) -> None:
    """A block the test machine cannot run: it parses, and its command lines parse."""
    if language in ("json", "yaml"):
        check_data(language, source)
        return
    if language == "python":
        compile(source, "<page>", "exec")
        return
    commands = [c for c, _ in console_commands(source)] if language == "console" else _script_commands(source)
    for command in commands:
        for words in _invocations(command):
            check_flags(words)


def _script_commands(source: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", source)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _invocations(command: str) -> Iterator[list[str]]:
    """The programs a command line runs, with their arguments (env, sudo, `parallel ... :::`
    and `ip netns exec NAME` unwrapped)."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError as e:
        raise AssertionError(f"`{command}` is not a shell command line: {e}") from None
    for part in _split_on(words, {"&&", "||", ";", "|"}):
        while part and (part[0] in ("sudo", "env", "exec") or re.fullmatch(r"[A-Za-z_]+=.*", part[0])):
            part = part[1:]
        if part[:3] == ["ip", "netns", "exec"]:
            part = part[4:]
            while part and (part[0] == "env" or re.fullmatch(r"[A-Za-z_]+=.*", part[0])):
                part = part[1:]
        if part and Path(part[0]).name == "parallel" and "backorigin" in part:
            yield part[:part.index("backorigin")]
            inner = [word.replace("{}", "0") for word in part[part.index("backorigin"):]]  # parallel's {}: the job's argument
            yield inner[:inner.index(":::")] if ":::" in inner else inner
        elif part:
            yield part


def _split_on(words: list[str], separators: set[str]) -> Iterator[list[str]]:
    current: list[str] = []
    for word in words:
        if word in separators:
            yield current
            current = []
        else:
            current.append(word)
    yield current


HELPED = {"mitmdump", "mitmweb"}  # programs whose --help lists every flag they take (iptables' does not, say)


def check_flags(words: list[str]) -> None:
    """`backorigin ...` parses with the command's own parser; mitmdump's and mitmweb's --help know
    each --flag given; other programs (ip, iptables, kubectl, GNU parallel) are only split into words."""
    program = Path(words[0]).name
    if program == "backorigin":
        from backorigin.tools import cli

        try:
            cli.parser().parse_args(words[1:])
        except SystemExit as e:
            raise AssertionError(f"`{shlex.join(words)}`: backorigin's own parser refuses it") from e
        return
    if program not in HELPED:
        return
    flags = sorted({word.split("=", 1)[0] for word in words[1:] if word.startswith("--") and len(word) > 2})
    helped = subprocess.run([str(REPO / ".venv" / "bin" / program), "--help"], capture_output=True, text=True, timeout=60)
    unknown = [flag for flag in flags if flag not in helped.stdout + helped.stderr]
    assert not unknown, f"`{shlex.join(words)}`: {program} --help does not know {', '.join(unknown)}"


# Sybil's side ----------------------------------------------------------------------------------


def page_of(example: Example) -> Page:
    """The page's world, made when its first block runs (Sybil's setup sees no document)."""
    if "page" not in example.namespace:
        example.namespace["page"] = Page(Path(example.document.path))
    return example.namespace["page"]


def directive(example: Example) -> None:
    page = page_of(example)
    text = str(example.parsed).strip()
    if text.startswith("background"):
        page.next.update(background="1", ready=shlex.split(text)[1])
    elif text.startswith("wait"):
        page.running_terminal().wait_for(shlex.split(text)[1])
    elif text == "ctrl-c":
        terminal = page.running_terminal()
        status = terminal.ctrl_c()
        assert status == 0, f"`{terminal.command}` exited with {status} after Ctrl-C:\n{terminal.text()}"
    elif text.startswith("not run"):
        page.next["not run"] = text
    elif text == "network":
        page.next["network"] = text
    else:
        raise AssertionError(f"unknown test directive: {text!r}")


def block(example: Example) -> None:
    page = page_of(example)
    try:
        run_block(page, example)
    except AssertionError as e:  # with what the other terminals show, as the reader would see them
        shown = "".join(f"\n--- the terminal running `{t.command}`, last lines:\n{t.text()[-2500:]}"
                        for t in page.terminals if t.process.poll() is None)
        raise AssertionError(f"{e}{shown}") from None


def run_block(page: Page, example: Example) -> None:
    language, title, source = example.region.lexemes["language"], example.region.lexemes["title"], str(example.parsed)
    if page.next.pop("not run", None) is not None:
        check_not_run(language, source)
        return
    if page.next.pop("network", None) is not None:
        run_outside(page, language, source)
        return
    if title:  # a file the next commands use (a bad rules file on purpose, say): it only has to parse
        if language == "json":
            json.loads(source)
        elif language == "yaml":
            list(yaml.safe_load_all(source))
        write_file(page, title, source)
    elif language == "console":
        evaluate_console(page, source)
    elif language in ("bash", "sh"):
        evaluate_script(page, source)
    elif language == "python":
        evaluate_script(page, f"python - <<'__PAGE_PYTHON__'\n{source}__PAGE_PYTHON__")
    elif language in ("json", "yaml"):
        check_data(language, source)


class DirectiveParser:
    lexer = DirectiveInHTMLCommentLexer(directive="test", arguments=r".+?")

    def __call__(self, document: Any) -> Iterator[Region]:
        for region in self.lexer(document):
            region.parsed = region.lexemes["arguments"]
            region.evaluator = directive
            yield region


class BlockParser:
    lexer = RawFencedCodeBlockLexer(info_pattern=_FENCE_INFO)
    languages = {"console", "bash", "sh", "python", "json", "yaml"}

    def __call__(self, document: Any) -> Iterator[Region]:
        for region in self.lexer(document):
            if region.lexemes["language"] in self.languages:
                region.parsed = region.lexemes["source"]
                region.evaluator = block
                yield region


def teardown(namespace: dict[str, Any]) -> None:
    if "page" in namespace:
        namespace.pop("page").close()
