"""The MLflow registry door: model versions, aliases, version tags, the champion/challenger lookup, downloads.

`Registry(uri)` is one store's model registry; promotion policy (promotion.py), the CLI's `models` commands,
batch prediction and the pipelines reach registered models only through it. Registration records the
sha256 of the version's weights and manifest as tags: a download is kept in the user's own cache
(0700) under that checksum and checked against it before every use.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from lstm_dist.config import redact_uri
from lstm_dist.models.saved import MODEL_FILE
from lstm_dist.storage import node_cache
from lstm_dist.tracking import TrackingError, check_tracking_uri, use_tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"
EVAL_KEY_TAG = "lstm_dist.evaluate_key"  # on a model version: the evaluation it was registered from
MANIFEST_FILE = "manifest.json"
# On a model version: sha256 of its weights and manifest, written at registration (what a download is checked by).
SHA256_TAGS = {MODEL_FILE: "lstm_dist.sha256.model", MANIFEST_FILE: "lstm_dist.sha256.manifest"}
CHECKSUMS_FILE = "checksums.json"  # in a cached download: the sha256 each file had when it was downloaded


def _quietly(call):
    """`call()`, with what MLflow prints to stderr meanwhile (`Successfully registered model …`, `Created
    version …`: prints, not log records) sent to MLflow's logger at INFO: its log file, the terminal with `-v`."""
    with contextlib.redirect_stderr(io.StringIO()) as printed:
        result = call()
    for line in printed.getvalue().splitlines():
        logging.getLogger("mlflow").info(line)
    return result


class RegistryError(TrackingError):
    """A registered model or version that cannot be found or used as asked; the message says what to give."""


@dataclass
class ModelFiles:
    """A registered model version, downloaded: its weights and manifest as local files."""

    uri: str
    name: str
    version: str
    run_id: str
    directory: Path

    @property
    def weights(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST_FILE

    def metadata(self) -> dict[str, str]:
        return {
            "model_uri": self.uri,
            "model_name": self.name,
            "model_version": self.version,
            "model_run_id": self.run_id,
        }


class Registry:
    """The model registry of one MLflow store (its tracking URI)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    # --- lookups

    def alias_version(self, name: str, alias: str):
        """The version behind `alias` (a ModelVersion), or None when the model or the alias does not exist."""
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def version(self, name: str, ref: str):
        """Version `ref` of `name`: a number or an alias (champion, challenger)."""
        try:
            if str(ref).isdigit():
                return self.client.get_model_version(name, str(ref))
            return self.client.get_model_version_by_alias(name, ref)
        except MlflowException as exc:
            raise RegistryError(
                f"model '{name}' has no version {ref} in {redact_uri(self.uri)}: {redact_uri(exc.message)}"
            ) from None

    def resolve(self, uri: str):
        """`models:/name@alias` or `models:/name/3` -> the registry's ModelVersion."""
        if not uri.startswith("models:/"):
            raise RegistryError(f"'{uri}': give a registered model, models:/<name>@<alias> or models:/<name>/<version>")
        ref = uri[len("models:/") :]
        if "@" in ref:
            name, version = ref.split("@", 1)
        else:
            name, _, version = ref.partition("/")
            if not version.isdigit():
                raise RegistryError(f"'{uri}': the version after the name must be a number or @alias")
        try:
            return self.version(name, version)
        except RegistryError as exc:
            raise RegistryError(f"'{uri}' not found in the registry at {redact_uri(self.uri)}: {exc}") from None

    def versions(self, name: str) -> list:
        """Every version of `name`, newest first ([] when there is no such model)."""
        try:
            found = self.client.search_model_versions(f"name='{name}'")
        except MlflowException as exc:
            raise RegistryError(f"cannot list the versions of '{name}': {redact_uri(exc.message)}") from None
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def find_version(self, name: str, *, tag: str, value: str):
        """The newest version of `name` whose tag `tag` equals `value`, or None."""
        try:
            found = self.versions(name)
        except RegistryError:
            return None
        return next((v for v in found if v.tags.get(tag) == value), None)

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: version} of a registered model."""
        return {alias: str(v) for alias, v in self.client.get_registered_model(name).aliases.items()}

    # --- changes

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(name, alias)

    def set_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def register(
        self, model_uri: str, name: str, *, tags: dict[str, str], files: dict[str, str], description: str = ""
    ) -> str:
        """A new version of `name` from a logged model; returns its number. `files` ({MODEL_FILE: path,
        MANIFEST_FILE: path}) are the logged files, whose sha256 the version keeps for downloads."""
        use_tracking_uri(self.uri)  # mlflow.register_model links the logged model through the fluent API
        tags = {**tags, **{SHA256_TAGS[kind]: _sha256(Path(path)) for kind, path in files.items()}}
        try:
            version = _quietly(lambda: str(mlflow.register_model(model_uri, name, tags=tags).version))
            if description:
                text = description.replace("{version}", version)  # e.g. the model card's load lines
                self.client.update_model_version(name, version, description=text)
        except MlflowException as exc:
            raise RegistryError(f"could not register the model as '{name}': {redact_uri(exc.message)}") from None
        return version

    # --- loading

    def signature(self, name: str, version: str) -> str | None:
        """The version's input and output schema as text, or None when it was logged without one."""
        from mlflow.models import get_model_info

        use_tracking_uri(self.uri)  # models:/ URIs resolve against the fluent API's store
        sig = get_model_info(f"models:/{name}/{version}").signature
        if sig is None:
            return None
        return f"inputs:  {sig.inputs.to_dict()}\noutputs: {sig.outputs.to_dict() if sig.outputs else '-'}"

    def load_python_model(self, name: str, version: str):
        """The pyfunc's Python model object (serving.ForecastModel) of a registered version."""
        use_tracking_uri(self.uri)  # models:/ URIs resolve against the fluent API's store
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()

    def download(self, uri: str, *, cache_dir: str | os.PathLike | None = None) -> ModelFiles:
        """A registered version's weights and manifest as local files, checked against the sha256 recorded at
        registration; kept under `cache_dir` (default: the user's cache, 0700) and checked again on reuse."""
        mv = self.resolve(uri)
        expected = {kind: mv.tags[tag] for kind, tag in SHA256_TAGS.items() if tag in mv.tags}
        # Name and version are only unique within one registry: a version without recorded checksums (registered
        # before they existed) is keyed by its store, run and source instead.
        key = expected.get(MODEL_FILE) or hashlib.sha256(f"{self.uri}|{mv.run_id}|{mv.source}".encode()).hexdigest()
        base = private_dir(Path(cache_dir) if cache_dir else node_cache() / "models")
        dst = base / f"{mv.name}-v{mv.version}-{key[:16]}"
        files = ModelFiles(uri=uri, name=mv.name, version=str(mv.version), run_id=mv.run_id or "", directory=dst)
        if _verified(dst, expected):
            return files
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=base))
        try:
            self._fetch(mv, into=tmp)
            got = {kind: _sha256(tmp / kind) for kind in SHA256_TAGS}
            wrong = [kind for kind, sha in expected.items() if got[kind] != sha]
            if wrong:
                raise RegistryError(
                    f"{uri}: the downloaded {', '.join(wrong)} of {mv.name} v{mv.version} differ from the sha256 "
                    "recorded when it was registered; the artifact store was changed since. Register the model again"
                )
            (tmp / CHECKSUMS_FILE).write_text(json.dumps(got))
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(tmp, dst)  # whole, or not at all: a concurrent download of the same version is harmless
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return files

    def _fetch(self, mv, *, into: Path) -> None:
        import yaml

        # The version's own artifact location, not a models:/ URI: those resolve against the process-wide
        # registry URI, and setting it (mlflow.set_registry_uri) leaks MLFLOW_REGISTRY_URI into the environment.
        source = self.client.get_model_version_download_uri(mv.name, mv.version)
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into / "m"), tracking_uri=self.uri)
        )
        spec = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
        (local / spec["model"]["path"]).replace(into / MODEL_FILE)
        (local / spec["manifest"]["path"]).replace(into / MANIFEST_FILE)
        shutil.rmtree(into / "m")


def open_registry(uri: str) -> Registry:
    """The registry of an existing store at `uri`, after the fast checks of tracking.check_tracking_uri.
    Reading never creates a store: a sqlite file that is not there is an error, not a new empty database."""
    check_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise RegistryError(
            f"no MLflow store at {redact_uri(uri)}: run a pipeline with this config first, or point at the store "
            "that holds the model (tracking.uri=... or MLFLOW_TRACKING_URI)"
        )
    return Registry(uri)


def private_dir(path: Path) -> Path:
    """`path`, created if needed, owned by this user and closed to others (0700): a model cache that another
    local user could write into would let them plant the files this user then loads."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise RegistryError(f"the model cache {path} belongs to another user; give a cache dir of your own")
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def _verified(directory: Path, expected: dict[str, str]) -> bool:
    """Whether a cached download is whole and its files still have the sha256 they were registered (or, for
    versions without recorded checksums, downloaded) with."""
    record = directory / CHECKSUMS_FILE
    if not record.is_file() or not all((directory / kind).is_file() for kind in SHA256_TAGS):
        return False
    wanted = {**json.loads(record.read_text()), **expected}
    return all(_sha256(directory / kind) == wanted.get(kind) for kind in SHA256_TAGS)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
