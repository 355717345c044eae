"""rollout.toml: a full file parses; every mistake is a ConfigError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout import config as configuration
from rollout.config import TARGET_KEYS, BuildSettings, Channel, HealthPolicy, Strategy
from rollout.errors import EXIT_USAGE, ConfigError

FULL = """
[ledger]
path = "var/rollout.db"

[registry]
insecure = ["registry.internal:5000"]
ca_bundle = "certs/ca.pem"
docker_config = "docker/config.json"

[notify]
urls = ["http://127.0.0.1:9/hook"]

[apps.web]
image = "127.0.0.1:5000/shop/web"

[apps.web.health]
timeout = 45
interval = 0.5
stable = 3
http = "http://127.0.0.1:8080/health"
max_restarts = 3

[apps.web.build]
context = "."

[apps.web.rollout]
strategy = "rolling"
batch_size = 2
pause = 1.5

[[apps.web.targets]]
name = "local"
kind = "docker"
host = "unix:///var/run/docker.sock"
container = "web"
command = ["httpd", "-f", "-p", "8080"]
entrypoint = "/bin/sh"
network = "host"
env = { PORT = "8080", WORKERS = 4 }
ports = { "8080/tcp" = 8080 }
volumes = ["/srv/data:/data:ro"]
restart = "unless-stopped"
labels = { team = "shop" }
user = "1000:1000"

[apps.web.targets.health]
timeout = 90
http = "http://127.0.0.1:8081/health"

[[apps.web.targets]]
name = "cluster"
kind = "kubernetes"
kubeconfig = "~/.kube/config"
context = "staging"
namespace = "shop"
deployment = "web"
container = "app"

[apps.api]
image = "registry.example.com/shop/api"

[[apps.api.targets]]
name = "local"
container = "api"
"""


def write(tmp_path: Path, text: str, name: str = "rollout.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLLOUT_LEDGER", raising=False)
    monkeypatch.delenv("ROLLOUT_CONFIG", raising=False)


def test_full_example_parses(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    cfg = configuration.load(str(path))
    assert cfg.path == path
    assert cfg.ledger_path == tmp_path / "var" / "rollout.db"
    assert cfg.registry.insecure == ("registry.internal:5000",)
    assert cfg.registry.ca_bundle == str(tmp_path / "certs" / "ca.pem")
    assert cfg.registry.docker_config == str(tmp_path / "docker" / "config.json")
    assert cfg.notify.channels == (Channel("http://127.0.0.1:9/hook", "json"),)
    assert sorted(cfg.apps) == ["api", "web"]

    web = cfg.app("web")
    assert (web.registry, web.repository, web.image) == ("127.0.0.1:5000", "shop/web", "127.0.0.1:5000/shop/web")
    assert web.health == HealthPolicy(timeout=45, interval=0.5, stable=3, http="http://127.0.0.1:8080/health",
                                      max_restarts=3)
    assert web.build == BuildSettings(context=tmp_path.resolve(), dockerfile=tmp_path.resolve() / "Dockerfile")
    assert web.rollout == Strategy(kind="rolling", batch_size=2, pause=1.5)
    local, cluster = web.targets
    assert (local.name, local.kind) == ("local", "docker")
    # Every docker key of the example reaches the target's settings.
    assert set(local.settings) == TARGET_KEYS["docker"] - {"name", "kind", "health"}
    assert local.settings["command"] == ["httpd", "-f", "-p", "8080"]
    assert local.settings["env"] == {"PORT": "8080", "WORKERS": 4}
    assert (cluster.kind, cluster.settings["deployment"], cluster.settings["namespace"]) == ("kubernetes", "web", "shop")

    api = cfg.app("api")
    assert api.registry == "registry.example.com" and api.targets[0].kind == "docker"
    assert api.health == HealthPolicy()


def test_target_health_overrides_app_health_key_by_key(tmp_path: Path) -> None:
    web = configuration.load(str(write(tmp_path, FULL))).app("web")
    local, cluster = web.targets
    assert local.health.timeout == 90 and local.health.http == "http://127.0.0.1:8081/health"
    # Keys the target does not set come from the app.
    assert (local.health.interval, local.health.stable, local.health.max_restarts) == (0.5, 3, 3)
    assert cluster.health == web.health


def test_ledger_defaults_next_to_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps.web]\nimage = "127.0.0.1:5000/web"\n[[apps.web.targets]]\nname = "a"\ncontainer = "w"\n')
    assert configuration.load(str(path)).ledger_path == tmp_path / "state" / "ledger.db"


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, FULL, "elsewhere.toml")
    monkeypatch.setenv("ROLLOUT_CONFIG", str(path))
    monkeypatch.setenv("ROLLOUT_LEDGER", str(tmp_path / "override.db"))
    cfg = configuration.load(None)
    assert cfg.path == path
    assert cfg.ledger_path == tmp_path / "override.db"


def test_missing_config_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"config file {missing} not found"):
        configuration.load(str(missing))
    monkeypatch.setenv("ROLLOUT_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=str(missing)):
        configuration.load(None, required=False)


def test_optional_config_may_be_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = configuration.load(None, required=False)
    assert cfg.apps == {} and cfg.ledger_path == tmp_path / "state" / "ledger.db"


BASE_APP = '[apps.web]\nimage = "127.0.0.1:5000/web"\n'
TARGET = '[[apps.web.targets]]\nname = "local"\ncontainer = "web"\n'

BAD = {
    "unknown top-level key": ('colour = "blue"\n' + BASE_APP + TARGET, "unknown key colour"),
    "unknown app key": (BASE_APP + 'imagee = "x"\n' + TARGET, "unknown key apps.web.imagee"),
    "unknown target key": (BASE_APP + TARGET + 'containr = "x"\n', "unknown key apps.web.targets[0].containr"),
    "docker key on a kubernetes target": (
        BASE_APP + '[[apps.web.targets]]\nname = "k"\nkind = "kubernetes"\ndeployment = "web"\nnetwork = "host"\n',
        "unknown key apps.web.targets[0].network"),
    "unknown app health key": (BASE_APP + '[apps.web.health]\ntimout = 5\n' + TARGET, "unknown key apps.web.health.timout"),
    "unknown target health key": (BASE_APP + TARGET + '[apps.web.targets.health]\nstabel = 5\n',
                                  "unknown key apps.web.targets[0].health.stabel"),
    "unknown ledger key": ('[ledger]\npth = "x"\n' + BASE_APP + TARGET, "unknown key ledger.pth"),
    "string timeout": (BASE_APP + '[apps.web.health]\ntimeout = "30s"\n' + TARGET, "apps.web.health.timeout = '30s'"),
    "negative interval": (BASE_APP + '[apps.web.health]\ninterval = -1\n' + TARGET, "apps.web.health.interval = -1"),
    "nan interval": (BASE_APP + '[apps.web.health]\ninterval = nan\n' + TARGET, "apps.web.health.interval = nan"),
    "infinite timeout": (BASE_APP + '[apps.web.health]\ntimeout = inf\n' + TARGET, "apps.web.health.timeout = inf"),
    "infinite pause": (BASE_APP + '[apps.web.rollout]\npause = inf\n' + TARGET, "apps.web.rollout.pause = inf"),
    "bad restart policy": (BASE_APP + TARGET + 'restart = "on-failure:abc"\n', "restart = 'on-failure:abc'"),
    "zero interval": (BASE_APP + '[apps.web.health]\ninterval = 0\n' + TARGET, "apps.web.health.interval must be greater"),
    "bool stable": (BASE_APP + TARGET + '[apps.web.targets.health]\nstable = true\n', "apps.web.targets[0].health.stable = True"),
    "fractional max_restarts": (BASE_APP + '[apps.web.health]\nmax_restarts = 1.5\n' + TARGET, "apps.web.health.max_restarts"),
    "http probe not a URL": (BASE_APP + '[apps.web.health]\nhttp = "localhost:80/health"\n' + TARGET, "apps.web.health.http"),
    "missing image": ('[apps.web]\n' + TARGET, "apps.web.image is missing"),
    "image not a string": ('[apps.web]\nimage = 5\n' + TARGET, "apps.web.image must be a string"),
    "bad image reference": ('[apps.web]\nimage = "127.0.0.1:5000/Web App"\n' + TARGET, "apps.web.image: invalid"),
    "image with a tag": ('[apps.web]\nimage = "127.0.0.1:5000/web:v1"\n' + TARGET, "apps.web.image: invalid"),
    "app without targets": (BASE_APP, "app 'web' has no targets"),
    "targets not an array": (BASE_APP + 'targets = "local"\n', "apps.web.targets must be an array"),
    "duplicate target names": (BASE_APP + TARGET + TARGET, "apps.web.targets: duplicate target name 'local'"),
    "unknown target kind": (BASE_APP + TARGET + 'kind = "nomad"\n', "apps.web.targets[0].kind = 'nomad'"),
    "target kind not a string": (BASE_APP + TARGET + 'kind = ["docker"]\n', "apps.web.targets[0].kind"),
    "target without name": (BASE_APP + '[[apps.web.targets]]\ncontainer = "web"\n', "apps.web.targets[0].name is missing"),
    "kubernetes without deployment": (BASE_APP + '[[apps.web.targets]]\nname = "k"\nkind = "kubernetes"\n',
                                      "apps.web.targets[0].deployment is missing"),
    "docker without container": (BASE_APP + '[[apps.web.targets]]\nname = "d"\n', "apps.web.targets[0].container is missing"),
    "env not a table": (BASE_APP + TARGET + 'env = ["A=1"]\n', "apps.web.targets[0].env must be a table"),
    "command not strings": (BASE_APP + TARGET + 'command = [1, 2]\n', "apps.web.targets[0].command must be"),
    "apps not a table": ('apps = "web"\n', "apps must be a table"),
    "registry insecure not a list": ('[registry]\ninsecure = "x"\n' + BASE_APP + TARGET, "registry.insecure must be"),
}


@pytest.mark.parametrize("text,names", list(BAD.values()), ids=list(BAD))
def test_mistakes_name_the_file_and_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE
    assert str(path) in message
    assert names in message
    assert "\n" not in message


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE_APP + "[[apps.web.targets]\nname = 'x'\n")
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    assert str(path) in str(caught.value) and "not valid TOML" in str(caught.value) and "line 3" in str(caught.value)


def test_ledger_path_absolute_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, f'[ledger]\npath = "{tmp_path / "abs.db"}"\n' + BASE_APP + TARGET)
    assert configuration.load(str(path)).ledger_path == tmp_path / "abs.db"


def test_one_app_is_the_default(tmp_path: Path) -> None:
    cfg = configuration.load(str(write(tmp_path, BASE_APP + TARGET)))
    assert cfg.app(None).name == "web"


def test_several_apps_must_be_named(tmp_path: Path) -> None:
    cfg = configuration.load(str(write(tmp_path, FULL)))
    with pytest.raises(ConfigError, match=r"several apps are configured \(api, web\): name one"):
        cfg.app(None)


def test_unknown_app_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    cfg = configuration.load(str(path))
    with pytest.raises(ConfigError) as caught:
        cfg.app("shop")
    assert "unknown app 'shop'" in str(caught.value)
    assert str(path) in str(caught.value) and "api, web" in str(caught.value)


def test_no_apps_at_all(tmp_path: Path) -> None:
    path = write(tmp_path, "[notify]\n")
    with pytest.raises(ConfigError, match=f"{path} defines no apps"):
        configuration.load(str(path)).app(None)


def test_shipped_docker_example_parses() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "docker-host" / "rollout.toml"
    cfg = configuration.load(str(example))
    web = cfg.app(None)
    assert web.image == "127.0.0.1:5000/rollout-test/app"
    assert cfg.ledger_path == example.parent / "state" / "ledger.db"
    assert [t.kind for t in web.targets] == ["docker"]
