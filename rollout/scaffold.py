"""`rollout init`: write a commented rollout.toml, filled from a running container or Deployment when asked.

What is read from a container is what the operator chose (env, network, ports,
volumes, restart policy, user), not what came with the image.

rollout.toml is the file teams commit, and a container's env and command often hold
database URLs with passwords and API keys, so nothing is written that could be one
(the docker target carries the running container's own env, command and labels over
on every deploy anyway, so leaving them out loses nothing):
- env: only values of a shape that cannot be a credential (`harmless_value`) under a
  name that does not look like a secret; the others are named in a comment, never
  their values. No `${VAR}` placeholder is written: rollout.toml is not expanded, so a
  placeholder would be deployed as its literal text.
- command / entrypoint: never written, only named in a comment. Which arguments are
  credentials is beyond telling (`mysqld -phunter2`, `curl -u admin:s3cr3t`, `psql -W x`,
  `vault login s.X`, `app -k KEY`), and the deploy carries them over.
- labels are never written (they are carried over, and may hold tokens).
- a Deployment, StatefulSet or DaemonSet: only where it is (kubeconfig, context, namespace,
  workload, name, container); its env stays in the cluster, since the kubernetes target changes
  nothing but the image.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rollout import config as configuration
from rollout.errors import InvalidReference, TargetUnreachable, UserError, one_line
from rollout.reference import checked_container_name, parse

SECRET_NAME = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE|CERT|DSN|COOKIE|SALT|SESSION|SIGN",
                         re.IGNORECASE)
# Env values rollout can tell are harmless: a short number, a yes/no or environment/log-level
# word, an absolute path, or host:port. Anything else (a word, a URL: a webhook URL is its own
# secret) may be one.
HARMLESS_VALUE = re.compile(
    r"-?[0-9]{1,10}(\.[0-9]{1,6})?"
    r"|(?i:true|false|yes|no|on|off|production|prod|development|dev|staging|stage|preprod|qa|uat|test|local|sandbox"
    r"|debug|info|warn|warning|error|critical|trace)"
    r"|(/[A-Za-z0-9_.-]+)+/?"
    r"|[A-Za-z0-9.-]+:[0-9]{1,5}"
)
APP_NAME = re.compile(r"[^A-Za-z0-9_-]+")
# An app name init may write: what `rollout deploy APP:TAG` can name (rollout.cli APP_NAME) and a
# bare TOML key (TOML 1.0, unquoted keys: A-Za-z0-9_-), so `[apps.NAME]` needs no quoting.
VALID_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
EXAMPLE_IMAGE = "registry.example.com/team/web"


@dataclass
class Draft:
    """What `rollout init` will write: one app with one target."""

    app: str
    image: str  # repository, without tag or digest
    target: dict[str, Any]  # name, kind and the target's settings, in the order they are written
    running: str | None = None  # the image reference the source runs now
    notes: list[str] = field(default_factory=list)  # comments placed above the target
    has_healthcheck: bool = False
    source: str = ""  # "container web on unix:///..." etc., for the header


# -- reading a source ----------------------------------------------------------------------


def draft_from(sources: Mapping[str, str | None], options: Mapping[str, str | None],
               app: str | None = None, image: str | None = None) -> Draft:
    """The Draft `rollout init` writes, found through the target kinds' registry (rollout.targets.kinds).

    sources: init option -> its value, e.g. {"--from-container": "web", "--from-deployment": None};
    the one given picks the kind whose scaffold drafts from it; none given: the blank draft.
    options: the other init options by name ("host", "namespace", "kubeconfig", "context",
    "container"); each kind's scaffold reads its own. Raises UserError (exit 2) when more than
    one source is given, and what the scaffold raises (UserError 2, TargetUnreachable 5).
    """
    from rollout.targets.kinds import scaffolds

    registered = scaffolds()
    unknown = sorted(option for option in sources if option not in registered)
    if unknown:
        raise ValueError(f"no target kind drafts from {', '.join(unknown)}")  # a caller's bug, not the user's
    given = [option for option in registered if sources.get(option)]
    if len(given) > 1:
        raise UserError(f"give {' or '.join(given)}, not both" if len(given) == 2 else f"give one of {', '.join(given)}")
    if not given:
        return blank(app, image)
    return registered[given[0]].draft(str(sources[given[0]]), options, app, image)


def blank(app: str | None, image: str | None) -> Draft:
    """The commented example: one docker target for container `app` (default "web"), image `image`
    (default an example repository). Raises UserError (exit 2) for an app name init may not write."""
    name = _checked_app_name(app, "--app") if app else "web"
    return Draft(app=name, image=image or EXAMPLE_IMAGE,
                 target={"name": "local", "kind": "docker", "container": name, "network": "host"},
                 notes=["an example: set `container` to the container to manage, and `image` above to its repository"])


def from_container(name: str, host: str | None, app: str | None = None, image: str | None = None) -> Draft:
    """A docker target drafted from container `name` on the engine at `host` (as the docker target's
    `host`; None: $DOCKER_HOST or the local socket): what the operator chose (network, harmless env,
    ports, volumes, restart policy, user), never what may be a secret (see the module docstring).
    Raises UserError (exit 2) for no such container or a name init cannot use, TargetUnreachable
    (exit 5) when the engine does not answer."""
    import docker
    import docker.errors

    where = host or os.environ.get("DOCKER_HOST") or "the local Docker engine"
    try:
        client = docker.DockerClient(base_url=host, timeout=30, use_ssh_client=bool(host and host.startswith("ssh://"))) \
            if host else docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds for "no engine"
        raise TargetUnreachable(f"cannot reach the Docker engine at {where} ({one_line(exc, 200)}): start it or fix --host") from None
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        raise UserError(f"no container {name!r} on {where}: `docker ps -a` lists the containers") from None
    except docker.errors.APIError as exc:
        raise TargetUnreachable(f"cannot inspect container {name!r} on {where}: {one_line(exc, 200)}") from None
    attrs = container.attrs
    try:
        image_attrs = client.images.get(attrs["Image"]).attrs
    except docker.errors.ImageNotFound:
        image_attrs = {}
    image_config = image_attrs.get("Config") or {}
    running = _container_image(attrs["Config"].get("Image") or "", image_attrs)
    labels = attrs["Config"].get("Labels") or {}
    container_name = checked_container_name(attrs.get("Name"), f"the engine answered container {name!r} with the name",
                                            UserError, "nothing was written").lstrip("/")
    if app:
        app_name = _checked_app_name(app, "--app")
    elif "rollout.app" in labels:
        app_name = _checked_app_name(labels["rollout.app"], f"the label rollout.app of container {container_name}",
                                     "pass --app NAME")
    else:
        app_name = _app_name(container_name)
    draft = Draft(app=app_name, image=image or _repository(running, "--image"), target={}, running=running,
                  source=f"container {container_name} on {where}")
    settings: dict[str, Any] = {"name": "local" if not host else _app_name(host.split("://")[-1]) or "host",
                                "kind": "docker"}
    if host:
        settings["host"] = host
    settings["container"] = container_name
    host_config = attrs.get("HostConfig") or {}
    network = host_config.get("NetworkMode")
    if network and network != "default":
        settings["network"] = network
    env, hidden = _operator_env(attrs["Config"].get("Env") or [], image_config.get("Env") or [])
    if env:
        settings["env"] = env
    if hidden:
        draft.notes.append("env not copied, only named (rollout cannot tell these values are not secrets;"
                           f" the running container keeps them and each deploy carries them over): {', '.join(hidden)}")
    own = [setting for key, setting in (("Cmd", "command"), ("Entrypoint", "entrypoint"))
           if attrs["Config"].get(key) and attrs["Config"].get(key) != image_config.get(key)]
    if own:
        draft.notes.append(f"{' and '.join(own)} not copied (an argument may be a credential): the running"
                           " container keeps them and each deploy carries them over")
    user = attrs["Config"].get("User")
    if user and user != image_config.get("User"):
        settings["user"] = user
    ports = _ports(host_config.get("PortBindings") or {})
    if ports:
        settings["ports"] = ports
    if host_config.get("Binds"):
        settings["volumes"] = list(host_config["Binds"])
    restart = _restart(host_config.get("RestartPolicy") or {})
    if restart:
        settings["restart"] = restart
    draft.target = settings
    draft.has_healthcheck = bool((attrs["Config"].get("Healthcheck") or image_config.get("Healthcheck") or {}).get("Test"))
    return draft


def from_statefulset(name: str, namespace: str | None, kubeconfig: str | None, context: str | None,
                     container: str | None, app: str | None = None, image: str | None = None) -> Draft:
    """`rollout init --from-statefulset`: from_deployment for StatefulSet `name` (workload = "statefulset")."""
    return from_deployment(name, namespace, kubeconfig, context, container, app, image, workload="statefulset")


def from_daemonset(name: str, namespace: str | None, kubeconfig: str | None, context: str | None,
                   container: str | None, app: str | None = None, image: str | None = None) -> Draft:
    """`rollout init --from-daemonset`: from_deployment for DaemonSet `name` (workload = "daemonset")."""
    return from_deployment(name, namespace, kubeconfig, context, container, app, image, workload="daemonset")


def from_deployment(name: str, namespace: str | None, kubeconfig: str | None, context: str | None,
                    container: str | None, app: str | None = None, image: str | None = None,
                    workload: str = "deployment") -> Draft:
    """A kubernetes target drafted from Deployment `name` (or the StatefulSet or DaemonSet, by
    `workload`; namespace: given, else the context's, else "default"; kubeconfig and context as
    kubectl reads them): where it is and which container, never its env. Raises UserError (exit 2)
    for no such object or container, or several containers without `container`; TargetUnreachable
    (exit 5) when the API server does not answer."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from rollout.targets.kube_workloads import workload as workload_kind
    from rollout.targets.kubernetes import kubeconfig_file, new_api_client

    kind = workload_kind(workload, name)

    try:
        api_client = new_api_client(kubeconfig, context)
    except UserError as exc:
        raise UserError(f"{exc}: pass --kubeconfig") from None
    config_file = kubeconfig_file(kubeconfig)
    namespace = namespace or (_context_namespace(config_file, context) if config_file else None) or "default"
    try:
        response = kind.method(client.AppsV1Api(api_client), "read")(
            name, namespace, _request_timeout=30, _preload_content=False)
        deployment = json.loads(response.data)
    except ApiException as exc:
        if exc.status == 404:
            raise UserError(f"no {workload} {name!r} in namespace {namespace}: `kubectl get {kind.plural} -n {namespace}`"
                            " lists them") from None
        raise TargetUnreachable(f"{kind}: the Kubernetes API answered {exc.status} {exc.reason}") from None
    except Exception as exc:  # noqa: BLE001 - urllib3 connection errors and friends
        raise TargetUnreachable(f"the Kubernetes API is unreachable ({one_line(exc, 200)})") from None
    containers = deployment["spec"]["template"]["spec"]["containers"]
    names = [c["name"] for c in containers]
    if container is None and len(containers) > 1:
        raise UserError(f"{kind} has several containers ({', '.join(names)}): choose one with --container")
    chosen = container or names[0]
    if chosen not in names:
        raise UserError(f"{kind} has no container {chosen!r} (it has {', '.join(names)})")
    running = next(c["image"] for c in containers if c["name"] == chosen)
    settings: dict[str, Any] = {"name": _app_name(context or "cluster") or "cluster", "kind": "kubernetes"}
    if kubeconfig:
        settings["kubeconfig"] = str(Path(kubeconfig).expanduser().resolve())
    if context:
        settings["context"] = context
    settings["namespace"] = namespace
    if workload != "deployment":
        settings["workload"] = workload
    settings[workload] = name
    settings["container"] = chosen
    app_name = _checked_app_name(app, "--app") if app else _app_name(name)
    draft = Draft(app=app_name, image=image or _repository(running, "--image"), target=settings,
                  running=running, source=f"{kind} in namespace {namespace}")
    deadline = deployment["spec"].get("progressDeadlineSeconds")
    if deadline:
        draft.notes.append(f"the Deployment's progressDeadlineSeconds is {deadline}; rollout fails faster,"
                           " on the first crash loop or pull failure, or after health.timeout")
    if (deployment["spec"].get("updateStrategy") or {}).get("type") == "OnDelete":
        draft.notes.append(f"the {workload}'s updateStrategy is OnDelete: rollout refuses to deploy to it until"
                           " it is RollingUpdate (its controller would replace no pod)")
    probes = next(c for c in containers if c["name"] == chosen)
    draft.has_healthcheck = bool(probes.get("readinessProbe"))
    return draft


# -- writing -------------------------------------------------------------------------------


def render(draft: Draft) -> str:
    """The rollout.toml text for draft: header, the app with its image, the target, notes and the
    health section as comments; TOML that rollout.config loads as it is."""
    app = _key(draft.app)
    lines = [
        "# rollout.toml: written by `rollout init`" + (f" from {draft.source}" if draft.source else "") + ".",
        "# Every key is described in the README (Configuration); unknown keys are errors.",
        "",
        "[ledger]",
        'path = "state/ledger.db"   # every deploy, revert and rebuild; relative to this file ($ROLLOUT_LEDGER overrides)',
        "# or, instead of path, a PostgreSQL ledger the team shares ($ROLLOUT_LEDGER_URL overrides both;",
        "# the password goes in ~/.pgpass or $PGPASSWORD, not here; README, Ledger backends):",
        '# url = "postgresql://USER@HOST:5432/DBNAME?sslmode=verify-full"',
        "",
        "# [registry]",
        '# insecure = ["registry.lan:5000"]   # registries reached over plain HTTP (loopback ones always are)',
        '# ca_bundle = "certs/ca.pem"         # an extra CA for a private registry',
        '# docker_config = "~/.docker"        # where config.json (credentials) lives',
        "",
        f"[apps.{app}]",
        f"image = {_toml(draft.image)}   # repository; the tag comes from `rollout deploy {draft.app}:TAG`",
    ]
    if draft.running:
        lines.append(f"# now running: {draft.running}")
    lines += [
        "",
        f"[apps.{app}.health]",
        "timeout = 60     # seconds for a new release to become healthy",
        "interval = 1.0   # seconds between checks",
        "stable = 5       # seconds it must then stay healthy",
        '# http = "http://127.0.0.1:8080/health"   # optional HTTP probe: 2xx is healthy',
    ]
    if draft.has_healthcheck:
        check = "readiness probe" if draft.target.get("kind") == "kubernetes" else "HEALTHCHECK"
        lines.append(f"# its {check} is watched too")
    lines += [""]
    lines += [f"# {note}" for note in draft.notes]
    lines += [f"[[apps.{app}.targets]]"]
    for key, value in draft.target.items():
        lines.append(f"{_key(key)} = {_toml(value)}")
    if draft.target.get("kind") == "docker":
        lines += [
            "# The settings above win over the running container's on every deploy that creates a container",
            "# (remove one to let the container's own value carry over instead); everything not set here",
            "# (other env, mounts, ports, network, restart policy...) is carried over from the container.",
        ]
    lines += [
        "",
        "# [apps.NAME.rollout]   # several targets: strategy = \"parallel\" | \"rolling\", batch_size, pause",
        "",
        "# [notify]   # webhooks told about started/healthy/failed/reverted/revert_failed",
        '# urls = ["https://hooks.slack.com/services/${SLACK_WEBHOOK_PATH}", "https://ops.example/hooks/rollout"]',
        "",
    ]
    return "\n".join(lines)


def write(path: Path, text: str, *, force: bool) -> None:
    """Check the text is a valid config, then write it atomically; never overwrite without force."""
    if path.exists() and not force:
        raise UserError(f"{path} already exists: pass --force to overwrite it")
    configuration.parse(tomllib.loads(text), path)  # a draft that would not load is a bug here, not in the file
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- helpers ---------------------------------------------------------------------------------


def _container_image(configured: str, image_attrs: dict[str, Any]) -> str:
    """The reference the container was created from; an image id is replaced by a name the image carries."""
    if configured and not configured.startswith("sha256:") and not re.fullmatch(r"[0-9a-f]{12,64}", configured):
        return configured
    named = (image_attrs.get("RepoTags") or []) + (image_attrs.get("RepoDigests") or [])
    if not named:
        raise UserError("the container runs an image with no repository name (an image id): pass --image REPOSITORY")
    return named[0]


def _repository(reference: str, option: str) -> str:
    try:
        return parse(reference).name
    except InvalidReference:
        raise UserError(f"cannot read a repository from {reference!r}: pass {option} REPOSITORY") from None


def harmless_value(name: str, value: str) -> bool:
    """Whether an env variable may be written to rollout.toml: its name does not look like a
    secret's and its value has a shape no credential has (HARMLESS_VALUE: a short number, a
    yes/no or environment word, a path, a host[:port]). Unsure means no."""
    return not SECRET_NAME.search(name) and (value == "" or HARMLESS_VALUE.fullmatch(value) is not None)


def _operator_env(env: list[str], from_image: list[str]) -> tuple[dict[str, str], list[str]]:
    """The env the operator set (not inherited from the image): (written as is, only named)."""
    inherited = set(from_image)
    chosen: dict[str, str] = {}
    hidden: list[str] = []
    for item in env:
        if item in inherited or "=" not in item:
            continue
        name, value = item.split("=", 1)
        if harmless_value(name, value):
            chosen[name] = value
        else:
            hidden.append(name)
    return chosen, hidden


def _ports(bindings: dict[str, Any]) -> dict[str, str]:
    ports = {}
    for port, hosts in bindings.items():
        if hosts:
            first = hosts[0]
            ports[port] = f"{first.get('HostIp') or '0.0.0.0'}:{first.get('HostPort')}"
    return ports


def _restart(policy: dict[str, Any]) -> str | None:
    name = policy.get("Name") or ""
    if name in ("", "no"):
        return None
    retries = policy.get("MaximumRetryCount") or 0
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def _context_namespace(config_file: str, context: str | None) -> str | None:
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=config_file)
    except Exception:  # noqa: BLE001 - the client load above already reported a broken file
        return None
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace")


def _app_name(text: str) -> str:
    return APP_NAME.sub("-", text).strip("-_")[:63] or "web"


def _checked_app_name(value: object, source: str, hint: str = "") -> str:
    """value when it fits VALID_APP_NAME, else UserError (exit 2) naming source and value."""
    if isinstance(value, str) and VALID_APP_NAME.fullmatch(value):
        return value
    why = ("an app name is a letter or digit, then up to 62 letters, digits, _ or -" if isinstance(value, str)
           else f"a {type(value).__name__}, not text")
    shown = json.dumps(value, ensure_ascii=True)[:80] if isinstance(value, str) else type(value).__name__
    raise UserError(f"{source} is {shown}, which is not an app name: {why}" + (f"; {hint}" if hint else ""))


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml(value: Any) -> str:
    """A TOML value: JSON's string escapes are valid TOML basic-string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML forbids a raw DEL
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")