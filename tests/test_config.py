"""rollout.toml: a full file parses; every mistake is a ConfigError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout import config as configuration
from rollout.config import TARGET_KEYS, BuildSettings, Channel, HealthPolicy, Strategy
from rollout.errors import EXIT_USAGE, ConfigError
from support.project import Project, write_config

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
    assert cfg.ledger_location == tmp_path / "var" / "rollout.db"
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
    assert configuration.load(str(path)).ledger_location == tmp_path / "state" / "ledger.db"


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, FULL, "elsewhere.toml")
    monkeypatch.setenv("ROLLOUT_CONFIG", str(path))
    monkeypatch.setenv("ROLLOUT_LEDGER", str(tmp_path / "override.db"))
    cfg = configuration.load(None)
    assert cfg.path == path
    assert cfg.ledger_location == tmp_path / "override.db"


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
    assert cfg.apps == {} and cfg.ledger_location == tmp_path / "state" / "ledger.db"


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
    assert configuration.load(str(path)).ledger_location == tmp_path / "abs.db"


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
    assert cfg.ledger_location == example.parent / "state" / "ledger.db"
    assert [t.kind for t in web.targets] == ["docker"]


# -- one schema, checked at load -------------------------------------------------------------

SECTIONS = {
    "top level": ('colour = "blue"\n' + BASE_APP + TARGET, "colour"),
    "ledger": ('[ledger]\npth = "x"\n' + BASE_APP + TARGET, "ledger.pth"),
    "registry": ('[registry]\ninsecur = []\n' + BASE_APP + TARGET, "registry.insecur"),
    "notify": ('[notify]\nurl = ["http://127.0.0.1:9/hook"]\n' + BASE_APP + TARGET, "notify.url"),
    "app": (BASE_APP + 'imagee = "x"\n' + TARGET, "apps.web.imagee"),
    "health": (BASE_APP + '[apps.web.health]\ntimout = 5\n' + TARGET, "apps.web.health.timout"),
    "rollout": (BASE_APP + '[apps.web.rollout]\nstrategey = "rolling"\n' + TARGET, "apps.web.rollout.strategey"),
    "build": (BASE_APP + '[apps.web.build]\ncontext = "."\ncontxt = "."\n' + TARGET, "apps.web.build.contxt"),
    "target": (BASE_APP + TARGET + 'containr = "x"\n', "apps.web.targets[0].containr"),
}


@pytest.mark.parametrize("text,key", list(SECTIONS.values()), ids=list(SECTIONS))
def test_every_section_refuses_an_unknown_key_when_the_file_is_loaded(tmp_path: Path, text: str, key: str) -> None:
    # [build] used to be checked only by `rebuild` and [notify] only when a deploy started:
    # `deploy`, `status` and `history` accepted a misspelled key there.
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    assert str(caught.value).startswith(f"{path}: unknown key {key}: allowed here are ")
    assert caught.value.exit_code == EXIT_USAGE


LOAD_TIME = {
    "build context not a string": (BASE_APP + '[apps.web.build]\ncontext = 1\n' + TARGET,
                                   "apps.web.build.context must be a string"),
    "build without context": (BASE_APP + '[apps.web.build]\ndockerfile = "D"\n' + TARGET,
                              "apps.web.build.context is missing"),
    "unknown tag placeholder": (BASE_APP + '[apps.web.build]\ncontext = "."\ntag = "{user}"\n' + TARGET,
                                "apps.web.build.tag = '{user}': unknown placeholder {user}"),
    "unknown notify event": ('[notify]\nevents = ["exploded"]\n' + BASE_APP + TARGET, "notify.events"),
    "notify timeout too long": ('[notify]\ntimeout = 600\n' + BASE_APP + TARGET, "notify.timeout = 600"),
}


@pytest.mark.parametrize("text,names", list(LOAD_TIME.values()), ids=list(LOAD_TIME))
def test_build_and_notify_values_are_checked_at_load(tmp_path: Path, text: str, names: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    assert str(caught.value).startswith(f"{path}: ") and names in str(caught.value)


def test_deploy_refuses_a_misspelled_build_key_and_changes_nothing(project: Project, docker_client) -> None:  # type: ignore[no-untyped-def]
    write_config(project, extra='\n[apps.web.build]\ncontext = "."\ndockerfiel = "Dockerfile"\n')
    for command in (("deploy", "web:good1"), ("status",)):
        result = project.run(*command)
        assert result.returncode == EXIT_USAGE, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("rollout: error: ") and str(project.config) in line
        assert "unknown key apps.web.build.dockerfiel" in line
    assert not docker_client.containers.list(all=True, filters={"name": project.container})
    write_config(project)
    assert project.history() == []


def test_sections_are_typed_frozen_values(tmp_path: Path) -> None:
    import dataclasses

    cfg = configuration.load(str(write(tmp_path, FULL)))
    web = cfg.app("web")
    assert isinstance(web.build, BuildSettings) and web.build.tag == "{date}.{n}" and web.build.build_args == {}
    assert isinstance(web.rollout, Strategy) and web.rollout.max_parallel == 0
    assert cfg.app("api").rollout == Strategy() and cfg.app("api").build is None
    assert cfg.notify.timeout == 5.0 and "rebuild_skipped" not in cfg.notify.events
    for value, name in ((web.build, "tag"), (web.rollout, "kind"), (cfg.notify, "timeout")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)


def test_the_build_context_is_looked_for_only_by_what_builds(tmp_path: Path) -> None:
    # A deploy machine need not hold the sources: a missing context is rebuild's error, not load's.
    path = write(tmp_path, BASE_APP + '[apps.web.build]\ncontext = "src"\n' + TARGET)
    web = configuration.load(str(path)).app("web")
    assert web.build is not None and web.build.context == tmp_path.resolve() / "src"
    with pytest.raises(ConfigError, match=r"apps.web.build.context = 'src': .* is not a directory"):
        configuration.require_build(web, path)


class KindForTests:
    """The implementation a test kind names (rollout.targets.kinds imports it by module and name)."""

    def __init__(self, config: configuration.TargetConfig, app: configuration.AppConfig) -> None:
        self.name, self.config, self.app = config.name, config, app


def test_a_target_kind_is_one_registered_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout import schema
    from rollout.targets import open_target
    from rollout.targets.kinds import KINDS, Kind

    kind = Kind("nomad", {"job": schema.Field(schema.string), "group": schema.Field(schema.string)},
                module=__name__, implementation="KindForTests",
                required=(lambda settings: None if settings.get("job") else "job is missing: name the Nomad job",))
    monkeypatch.setitem(KINDS, "nomad", kind)
    target = '[[apps.web.targets]]\nname = "n"\nkind = "nomad"\n'
    web = configuration.load(str(write(tmp_path, BASE_APP + target + 'job = "web"\n'))).app("web")
    [config] = web.targets
    assert (config.kind, config.settings) == ("nomad", {"job": "web"})
    opened = open_target(config, web)
    assert isinstance(opened, KindForTests) and opened.config is config

    # Its schema, and only its schema, decides what the target may say.
    for text, names in ((target + 'job = "web"\ncontainer = "x"\n', "unknown key apps.web.targets[0].container"),
                        (target + 'job = 3\n', "apps.web.targets[0].job must be a string"),
                        (target, "apps.web.targets[0].job is missing")):
        path = write(tmp_path, BASE_APP + text)
        with pytest.raises(ConfigError) as caught:
            configuration.load(str(path))
        assert str(path) in str(caught.value) and names in str(caught.value)
    with pytest.raises(ConfigError, match="use \"docker\" or \"kubernetes\" or \"compose\" or \"nomad\""):
        configuration.load(str(write(tmp_path, BASE_APP + '[[apps.web.targets]]\nname = "x"\nkind = "swarm"\n')))


def test_a_build_path_that_cannot_be_a_path_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE_APP + '[apps.web.build]\ncontext = "src\\u0000x"\n' + TARGET)
    with pytest.raises(ConfigError, match=r"apps.web.build.context = 'src\\x00x': not a usable path") as caught:
        configuration.load(str(path))
    assert str(path) in str(caught.value)


URL_APP = BASE_APP + TARGET


@pytest.mark.parametrize(("environment", "ledger_table", "expected"), [
    ({}, 'url = "postgresql://ops@db.internal:5432/rollout"', "postgresql://ops@db.internal:5432/rollout"),
    ({"ROLLOUT_LEDGER_URL": "postgresql://ci@127.0.0.1/ledger"}, 'path = "state/x.db"',
     "postgresql://ci@127.0.0.1/ledger"),
    ({"ROLLOUT_LEDGER_URL": "postgres://ci@127.0.0.1/ledger", "ROLLOUT_LEDGER": "/tmp/file.db"},
     'url = "postgresql://ops@db/rollout"', "postgres://ci@127.0.0.1/ledger"),
    ({"ROLLOUT_LEDGER": "FILE"}, 'url = "postgresql://ops@db/rollout"', "FILE"),
])
def test_ledger_location_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str],
                               ledger_table: str, expected: str) -> None:
    """$ROLLOUT_LEDGER_URL beats $ROLLOUT_LEDGER beats the file's [ledger] url or path (README, Ledger backends)."""
    monkeypatch.delenv("ROLLOUT_LEDGER_URL", raising=False)
    monkeypatch.delenv("ROLLOUT_LEDGER", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(tmp_path / "file.db") if value == "FILE" else value)
    path = write(tmp_path, f"[ledger]\n{ledger_table}\n" + URL_APP)
    location = configuration.load(str(path)).ledger_location
    assert location == (tmp_path / "file.db" if expected == "FILE" else expected)


@pytest.mark.parametrize(("ledger_table", "environment", "message"), [
    ('url = "postgresql://a@b/c"\npath = "x.db"', {}, "[ledger] sets both url and path: keep url"),
    ('path = "postgresql://ops:hunter2@db/rollout"', {},
     "[ledger] path is 'postgresql://ops:***@db/rollout', a database URL, not a SQLite file: put it in [ledger] url"),
    ("", {"ROLLOUT_LEDGER": "postgresql://ops:hunter2@db/rollout"},
     "$ROLLOUT_LEDGER is 'postgresql://ops:***@db/rollout', a database URL, not a SQLite file: put it in $ROLLOUT_LEDGER_URL"),
    ("", {"ROLLOUT_LEDGER": "host=db password=hunter2"}, "a database URL, not a SQLite file"),
    ('url = "mysql://ops:hunter2@db/rollout"', {}, "[ledger] url is 'mysql://ops:***@db/rollout', not a PostgreSQL URL"),
    ("", {"ROLLOUT_LEDGER_URL": "db.internal password=hunter2"},
     "$ROLLOUT_LEDGER_URL is 'db.internal password=***', not a PostgreSQL URL"),
])
def test_bad_ledger_url_is_one_line_without_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         ledger_table: str, environment: dict[str, str],
                                                         message: str) -> None:
    monkeypatch.delenv("ROLLOUT_LEDGER_URL", raising=False)
    monkeypatch.delenv("ROLLOUT_LEDGER", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    path = write(tmp_path, (f"[ledger]\n{ledger_table}\n" if ledger_table else "") + URL_APP)
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    text = str(caught.value)
    assert message in text and "hunter2" not in text and "\n" not in text
    assert caught.value.exit_code == EXIT_USAGE


# -- [apps.NAME.traffic] (issue 14) -------------------------------------------------------------

SLOT_HEALTH = '[apps.web.health]\nhttp = "http://127.0.0.1:{port}/health"\n'
TRAFFIC = (SLOT_HEALTH + '[apps.web.traffic]\nrouter = "haproxy"\nadmin = "unix:///run/haproxy/admin.sock"\n'
           'route = "web"\nslots = [18081, 18082]\nslot_env = "PORT"\n')


def test_traffic_section_is_typed_and_a_target_overrides_it_key_by_key(tmp_path: Path) -> None:
    from rollout.config import Traffic

    path = write(tmp_path, BASE_APP + TRAFFIC + 'drain = 2.5\n' + TARGET
                 + '[[apps.web.targets]]\nname = "edge"\ncontainer = "web"\nhost = "ssh://edge"\n'
                 + 'traffic = { router = "caddy", admin = "http://127.0.0.1:2019", slots = [9001, 9002, 9003] }\n')
    local, edge = configuration.load(str(path)).apps["web"].targets
    assert local.traffic == Traffic("haproxy", "unix:///run/haproxy/admin.sock", "web", (18081, 18082), "PORT", 2.5)
    assert edge.traffic == Traffic("caddy", "http://127.0.0.1:2019", "web", (9001, 9002, 9003), "PORT", 2.5)


def test_without_a_traffic_section_targets_stay_stop_first(tmp_path: Path) -> None:
    [target] = configuration.load(str(write(tmp_path, BASE_APP + TARGET))).apps["web"].targets
    assert target.traffic is None


def test_a_ports_mapping_to_the_slot_replaces_slot_env(tmp_path: Path) -> None:
    text = BASE_APP + TRAFFIC.replace('slot_env = "PORT"\n', "") + TARGET + 'ports = { "80/tcp" = "127.0.0.1:{port}" }\n'
    [target] = configuration.load(str(write(tmp_path, text))).apps["web"].targets
    assert target.traffic is not None and target.traffic.slot_env is None
    assert target.settings["ports"] == {"80/tcp": "127.0.0.1:{port}"}


NO_SLOT_ENV = TRAFFIC.replace('slot_env = "PORT"\n', "")
BAD_TRAFFIC = {
    "unknown traffic key": (BASE_APP + TRAFFIC + 'drian = 5\n' + TARGET, "unknown key apps.web.traffic.drian"),
    "unknown router": (BASE_APP + TRAFFIC.replace('"haproxy"', '"nginx"') + TARGET, "apps.web.traffic.router = 'nginx'"),
    "one slot": (BASE_APP + TRAFFIC.replace("[18081, 18082]", "[18081]") + TARGET, "apps.web.traffic.slots = [18081]"),
    "same slot twice": (BASE_APP + TRAFFIC.replace("[18081, 18082]", "[18081, 18081]") + TARGET, "must be distinct"),
    "slot out of range": (BASE_APP + TRAFFIC.replace("18082", "70000") + TARGET, "apps.web.traffic.slots"),
    "slot not a number": (BASE_APP + TRAFFIC.replace("18082", '"18082"') + TARGET, "apps.web.traffic.slots"),
    "negative drain": (BASE_APP + TRAFFIC + 'drain = -1\n' + TARGET, "apps.web.traffic.drain = -1"),
    "slot_env not a name": (BASE_APP + TRAFFIC.replace('"PORT"', '"MY PORT"') + TARGET, "apps.web.traffic.slot_env"),
    "missing admin": (BASE_APP + TRAFFIC.replace('admin = "unix:///run/haproxy/admin.sock"\n', "") + TARGET,
                      "apps.web.traffic.admin is missing"),
    "missing slots in the target's table": (
        BASE_APP + TARGET + 'traffic = { router = "caddy", admin = "http://127.0.0.1:2019", route = "web", slot_env = "PORT" }\n',
        "apps.web.targets[0].traffic.slots is missing"),
    "admin of another router's form": (
        BASE_APP + TRAFFIC.replace("unix:///run/haproxy/admin.sock", "http://127.0.0.1:2019") + TARGET,
        "apps.web.traffic.admin = 'http://127.0.0.1:2019' is not an HAProxy runtime API address"),
    "neither slot_env nor a ports mapping": (BASE_APP + NO_SLOT_ENV + TARGET, "apps.web.traffic: tell the container its slot"),
    "both slot_env and a ports mapping": (BASE_APP + TRAFFIC + TARGET + 'ports = { "80" = "{port}" }\n',
                                          "not both, not neither"),
    "{port} in ports without traffic": (BASE_APP + TARGET + 'ports = { "80" = "{port}" }\n',
                                        "apps.web.ports: '80' maps to {port} but there is no traffic section"),
    "{port} in health.http without traffic": (
        BASE_APP + '[apps.web.health]\nhttp = "http://127.0.0.1:{port}/"\n' + TARGET, "health.http has {port}"),
    # A fixed port is the live release's slot (or none): the new one would pass on the old one's health.
    "health.http without {port} with traffic": (
        BASE_APP + TRAFFIC.replace("{port}", "18081") + TARGET,
        "apps.web.health.http = 'http://127.0.0.1:18081/health' probes a fixed port"),
    # "running" is not "listening": a slow boot would take the traffic before it answers.
    "no health.http with traffic": (BASE_APP + TRAFFIC.replace(SLOT_HEALTH, "") + TARGET,
                                    "apps.web.health.http is missing: with a traffic section"),
    "traffic on a kubernetes target": (
        BASE_APP + TRAFFIC + '[[apps.web.targets]]\nname = "k"\nkind = "kubernetes"\ndeployment = "web"\n',
        "a kubernetes target takes no traffic section"),
}


@pytest.mark.parametrize("text,names", list(BAD_TRAFFIC.values()), ids=list(BAD_TRAFFIC))
def test_traffic_mistakes_name_the_file_and_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        configuration.load(str(path))
    message = str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE
    assert str(path) in message and names in message and "\n" not in message
