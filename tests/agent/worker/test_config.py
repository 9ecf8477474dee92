"""Worker configuration: sources, precedence, the official keys, and every error path."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import pytest

from agent._errors import ConfigurationError
from agent.worker._config import (
    _SETTINGS,
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG_FILE,
    ConfigError,
    WorkerConfig,
    configure_parser,
    load_config,
)
from agent.worker._hostinfo import Capabilities
from agent.worker._throttle import ThrottleRule

DATA = Path(__file__).resolve().parents[2] / "data"
FARM = "farm-" + "0" * 32
FLEET = "fleet-" + "1" * 32
IDS = {"DEADLINE_WORKER_FARM_ID": FARM, "DEADLINE_WORKER_FLEET_ID": FLEET}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def load(
    argv: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> WorkerConfig:
    return load_config(parse(*argv), environ=IDS if environ is None else environ, config_file=file)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path


def error(
    argv: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> str:
    # One handler for every setup problem: a ConfigError is a ConfigurationError.
    with pytest.raises(ConfigurationError) as info:
        load(argv, environ, file)
    assert type(info.value) is ConfigError
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the parser ---------------------------------------------------------------------------


def test_every_flag_defaults_to_not_given() -> None:
    """With no arguments every worker flag is None, so the environment and the file apply."""
    args = vars(parse())
    assert args
    assert all(value is None for value in args.values()), args


def test_the_official_flag_names_are_accepted() -> None:
    """Every flag of the official agent's POSIX command line parses."""
    args = parse(
        "--farm-id", FARM, "--fleet-id", FLEET, "--persistence-dir", "/p",
        "--session-root-dir", "/s", "--logs-dir", "/l", "--profile", "p",
        "--run-jobs-as-agent-user", "--no-shutdown", "--no-local-session-logs",
        "--no-host-metrics-logging", "--host-metrics-logging-interval-seconds", "5",
        "--structured-logs", "--retain-session-dir", "--disallow-instance-profile",
        "--no-cleanup-session-user-processes", "-v", "--session-runtime", "rust",
        "--posix-job-user", "u:g",
    )  # fmt: skip
    given = {name for name, value in vars(args).items() if value is not None}
    assert given == {
        "farm_id", "fleet_id", "worker_persistence_dir", "session_root_dir", "worker_logs_dir",
        "profile", "run_jobs_as_agent_user", "no_shutdown", "local_session_logs",
        "host_metrics_logging", "host_metrics_logging_interval_seconds", "structured_logs",
        "retain_session_dir", "allow_instance_profile", "cleanup_session_user_processes",
        "verbose", "session_runtime", "posix_job_user",
    }  # fmt: skip


def test_each_setting_flag_sets_its_own_field() -> None:
    """Each table entry's flag is in the parser and its dest is the field it documents."""
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    dests = {opt: action.dest for action in parser._actions for opt in action.option_strings}
    fields = attrs.fields_dict(WorkerConfig)
    for setting in _SETTINGS:
        assert setting.name in fields
        if setting.flag is not None:
            assert dests[setting.flag] == setting.name


# --- defaults and precedence -----------------------------------------------------------------


def test_defaults_match_the_official_agent() -> None:
    """With only the ids set, every setting has the official (or documented farmhand) default."""
    config = load()
    assert config.cleanup_session_user_processes is True
    assert config.worker_persistence_dir == Path("/var/lib/deadline")
    assert config.worker_logs_dir == Path("/var/log/amazon/deadline")
    assert config.session_root_dir == Path("/sessions")
    assert config.allow_instance_profile is True
    assert config.shutdown_on_stop is True
    assert config.local_session_logs is True
    assert config.host_metrics_logging is True
    assert config.host_metrics_logging_interval_seconds == 60
    assert (config.verbose, config.structured_logs, config.retain_session_dir) == (
        False,
        False,
        False,
    )
    assert config.drain_grace_seconds == 4
    assert (config.imds_monitor, config.health_port, config.health_address) == (
        False,
        None,
        "127.0.0.1",
    )
    assert config.log_format == "console"
    assert config.capabilities == Capabilities()
    assert config.worker_state_file == Path("/var/lib/deadline/worker.json")
    assert config.worker_credentials_dir == Path("/var/lib/deadline/credentials")
    assert config.config_file is None
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("flag", "env", "toml", "field", "values"),
    [
        pytest.param(
            ["--session-root-dir", "/cli"], "DEADLINE_WORKER_SESSION_ROOT_DIR",
            '[worker]\nsession_root_dir = "/file"', "session_root_dir",
            (Path("/cli"), Path("/env"), Path("/file"), Path("/sessions")), id="session_root_dir",
        ),
        pytest.param(
            ["--host-metrics-logging-interval-seconds", "1"],
            "DEADLINE_WORKER_HOST_METRICS_LOGGING_INTERVAL_SECONDS",
            "[logging]\nhost_metrics_logging_interval_seconds = 3",
            "host_metrics_logging_interval_seconds", (1.0, 2.0, 3.0, 60.0), id="interval",
        ),
        pytest.param(
            ["--profile", "cli"], "DEADLINE_WORKER_PROFILE", '[aws]\nprofile = "file"',
            "profile", ("cli", "env", "file", None), id="profile",
        ),
        pytest.param(
            ["--drain-grace-seconds", "1"], "DEADLINE_WORKER_DRAIN_GRACE_SECONDS",
            "[worker]\ndrain_grace_seconds = 3", "drain_grace_seconds", (1.0, 2.0, 3.0, 4.0),
            id="drain_grace_seconds",
        ),
        pytest.param(
            ["--health-port", "1"], "DEADLINE_WORKER_HEALTH_PORT", "[worker]\nhealth_port = 3",
            "health_port", (1, 2, 3, None), id="health_port",
        ),
    ],
)  # fmt: skip
def test_cli_beats_env_beats_file_beats_default(
    tmp_path: Path,
    flag: list[str],
    env: str,
    toml: str,
    field: str,
    values: tuple[object, object, object, object],
) -> None:
    """Each source overrides the ones below it, one setting at a time."""
    path = write(tmp_path, toml)
    env_value = {"DEADLINE_WORKER_PROFILE": "env"}.get(env, "/env" if "DIR" in env else "2")
    environ = {**IDS, env: env_value}
    assert getattr(load(flag, environ, path), field) == values[0]
    assert getattr(load((), environ, path), field) == values[1]
    assert getattr(load((), IDS, path), field) == values[2]
    assert getattr(load((), IDS, None), field) == values[3]


def test_origins_name_where_each_value_came_from(tmp_path: Path) -> None:
    """``origins`` records the flag, variable or file key that set each setting."""
    path = write(tmp_path, f'[worker]\nfleet_id = "{FLEET}"')
    config = load(["--farm-id", FARM, "-v"], {"DEADLINE_WORKER_LOGS_DIR": "/l"}, path)
    assert config.origins == {
        "farm_id": "--farm-id",
        "verbose": "--verbose",
        "worker_logs_dir": "DEADLINE_WORKER_LOGS_DIR",
        "fleet_id": f"{path}: [worker] fleet_id",
    }


def test_boolean_flags_override_the_file_both_ways(tmp_path: Path) -> None:
    """A negative flag (--no-shutdown) and a positive one (-v) beat the file's opposite."""
    path = write(tmp_path, "[os]\nshutdown_on_stop = true\n[logging]\nverbose = false")
    config = load(["--no-shutdown", "-v"], IDS, path)
    assert config.no_shutdown is True
    assert config.verbose is True
    env = {**IDS, "DEADLINE_WORKER_NO_SHUTDOWN": "false"}
    assert load((), env, write(tmp_path, "[os]\nshutdown_on_stop = false")).no_shutdown is False


def test_shutdown_on_stop_is_the_inverse_of_no_shutdown(tmp_path: Path) -> None:
    """``[os] shutdown_on_stop = false`` means no_shutdown, as in the official agent."""
    assert load((), IDS, write(tmp_path, "[os]\nshutdown_on_stop = false")).no_shutdown is True
    assert load((), IDS, write(tmp_path, "[os]\nshutdown_on_stop = true")).no_shutdown is False


def test_session_root_dir_variable_works() -> None:
    """DEADLINE_WORKER_SESSION_ROOT_DIR sets the session root (it is ignored by the official agent)."""
    config = load((), {**IDS, "DEADLINE_WORKER_SESSION_ROOT_DIR": "/data/sessions"})
    assert config.session_root_dir == Path("/data/sessions")


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative directory is taken relative to the working directory, from any source."""
    monkeypatch.chdir(tmp_path)
    config = load(["--logs-dir", "logs"], {**IDS, "DEADLINE_WORKER_PERSISTENCE_DIR": "state"})
    assert config.worker_logs_dir == tmp_path / "logs"
    assert config.worker_persistence_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Y", True), ("on", True),
     ("t", True), ("false", False), ("0", False), ("No", False), ("n", False), ("off", False),
     ("F", False)],
)  # fmt: skip
def test_environment_booleans_parse_like_the_official_agent(text: str, value: bool) -> None:
    """Booleans from the environment accept pydantic v1's words, in any case."""
    assert load((), {**IDS, "DEADLINE_WORKER_VERBOSE": text}).verbose is value


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    """``DEADLINE_WORKER_PROFILE=`` leaves the file's profile in place instead of failing."""
    path = write(tmp_path, '[aws]\nprofile = "file"')
    assert load((), {**IDS, "DEADLINE_WORKER_PROFILE": ""}, path).profile == "file"


# --- the config file ----------------------------------------------------------------------------


def test_every_official_key_is_read() -> None:
    """A worker.toml with every official key set loads each value into its setting."""
    path = DATA / "worker-all-keys.toml"
    config = load((), {}, path)
    assert config.farm_id == "farm-aabbccddeeff11223344556677889900"
    assert config.fleet_id == "fleet-aabbccddeeff11223344556677889900"
    assert config.worker_persistence_dir == Path("/srv/deadline/state")
    assert config.session_root_dir == Path("/scratch/sessions")
    assert config.session_runtime == "python"
    assert config.cleanup_session_user_processes is False
    assert config.profile == "bootstrap_profile"
    assert config.region == "eu-west-1"
    assert config.allow_instance_profile is False
    assert config.verbose is True
    assert config.worker_logs_dir == Path("/srv/deadline/logs")
    assert config.local_session_logs is False
    assert config.structured_logs is True
    assert config.log_format == "json"
    assert config.host_metrics_logging is False
    assert config.host_metrics_logging_interval_seconds == 15.5
    assert config.run_jobs_as_agent_user is False
    assert config.posix_job_user == "render:renderers"
    assert config.posix_job_user_and_group == ("render", "renderers")
    assert config.no_shutdown is True
    assert config.retain_session_dir is True
    assert dict(config.capabilities.amounts) == {
        "amount.slots": 20.0,
        "deadline:amount.pets": 99.0,
        "amount.worker.gpu": 2.0,
    }
    assert dict(config.capabilities.attributes) == {
        "attr.groups": ("simulation", "maya", "nuke"),
        "acmewidgetsco:attr.admins": ("bob", "alice"),
    }
    assert config.config_file == path
    # Only session_runtime's note: every other key is known and used.
    assert len(config.warnings) == 1
    assert (
        "session_runtime=python is accepted for compatibility and ignored" in (config.warnings[0])
    )


def test_every_farmhand_key_is_read() -> None:
    """farmhand's own keys load from the sections they belong to."""
    config = load((), IDS, DATA / "worker-farmhand-keys.toml")
    assert config.drain_grace_seconds == 12.5
    assert config.report_interval_seconds == 0.25
    assert config.exit_after_jobs == 3
    assert config.idle_timeout == 600
    assert (config.health_port, config.health_address) == (8089, "::1")
    assert config.endpoint_url == "http://127.0.0.1:8080"
    assert config.disable_host_prefix is True
    assert config.imds_monitor is True
    assert config.imds_endpoint == "http://127.0.0.1:1338"
    assert config.imds_interval_seconds == 2.5
    assert config.log_format == "json"
    assert (config.log_rotate_count, config.log_max_bytes) == (2, 1048576)
    assert config.secret_patterns == ("tok-[0-9a-f]{16}", r"password=\S+")
    assert config.min_secret_length == 6
    assert config.failure_throttle == ThrottleRule(5, 300)
    assert config.failure_cooldown_seconds == 900
    assert str(config.work_hours) == "Mon-Fri 19:00-07:00, Sat-Sun 00:00-24:00"
    assert (config.only_when_user_idle, config.when_user_returns) == (True, "finish")
    assert config.warnings == ()


def test_the_installed_example_file_loads_quietly() -> None:
    """The official example as installed (all commented out) gives defaults and no warnings."""
    config = load((), IDS, DATA / "worker-example.toml")
    assert config.warnings == ()
    assert config == WorkerConfig(FARM, FLEET, config_file=DATA / "worker-example.toml")


def test_keys_the_example_documents_under_os_are_honoured(tmp_path: Path) -> None:
    """The example file's ``[os]`` placement of three keys works, unlike in the official agent."""
    path = write(
        tmp_path,
        "[os]\ncleanup_session_user_processes = false\nhost_metrics_logging = false\n"
        "host_metrics_logging_interval_seconds = 5",
    )
    config = load((), IDS, path)
    assert config.cleanup_session_user_processes is False
    assert config.host_metrics_logging is False
    assert config.host_metrics_logging_interval_seconds == 5
    assert config.warnings == ()


@pytest.mark.parametrize("os_first", [True, False])
def test_the_official_place_wins_over_the_os_alias(tmp_path: Path, os_first: bool) -> None:
    """With a key in both ``[logging]`` and ``[os]``, ``[logging]`` wins and ``[os]`` is named."""
    logging_table = "[logging]\nhost_metrics_logging = true\n"
    os_table = "[os]\nhost_metrics_logging = false\n"
    path = write(tmp_path, os_table + logging_table if os_first else logging_table + os_table)
    config = load((), IDS, path)
    assert config.host_metrics_logging is True
    assert config.warnings == (
        f"{path}: [os] host_metrics_logging: ignored, "
        f"{path}: [logging] host_metrics_logging is set too",
    )


def test_telemetry_keys_are_accepted_quietly(tmp_path: Path) -> None:
    """``[telemetry]`` is the official agent's; farmhand sends none and says nothing."""
    path = write(tmp_path, '[telemetry]\nopt_out = true\nidentifier = "x"')
    assert load((), IDS, path).warnings == ()


def test_an_unknown_key_is_a_warning_naming_it(tmp_path: Path) -> None:
    """A typo in a key is never silent: the warning names file, section, key and the likely fix."""
    path = write(tmp_path, "[logging]\nverbos = true")
    config = load((), IDS, path)
    assert config.verbose is False
    assert config.warnings == (
        f"{path}: [logging] verbos: unknown key ignored (did you mean 'verbose'?)",
    )


def test_an_unknown_section_is_a_warning_naming_it(tmp_path: Path) -> None:
    """An unknown section is named in a warning, with the closest known one."""
    path = write(tmp_path, "[loging]\nverbose = true")
    assert load((), IDS, path).warnings == (
        f"{path}: unknown section [loging] ignored (did you mean 'logging'?)",
    )


def test_a_missing_default_file_is_fine(tmp_path: Path) -> None:
    """When no file is named, a missing default file means file settings are simply absent."""
    config = load((), IDS, tmp_path / "absent.toml")
    assert config.config_file is None


def test_the_file_named_by_the_variable_is_read(tmp_path: Path) -> None:
    """DEADLINE_WORKER_CONFIG_FILE replaces the default file."""
    path = write(tmp_path, "[logging]\nverbose = true")
    config = load((), {**IDS, CONFIG_FILE_ENV: str(path)}, tmp_path / "default.toml")
    assert (config.verbose, config.config_file) == (True, path)


def test_the_config_flag_beats_the_variable(tmp_path: Path) -> None:
    """--config FILE wins over DEADLINE_WORKER_CONFIG_FILE."""
    flagged = tmp_path / "flag.toml"
    flagged.write_text("[logging]\nverbose = true")
    config = load(["--config", str(flagged)], {**IDS, CONFIG_FILE_ENV: str(tmp_path / "nope")})
    assert config.config_file == flagged


def test_the_default_path_is_the_official_one() -> None:
    """Without --config or the variable, /etc/amazon/deadline/worker.toml is read."""
    assert Path("/etc/amazon/deadline/worker.toml") == DEFAULT_CONFIG_FILE


# --- errors -----------------------------------------------------------------------------------


def test_a_missing_named_file_is_an_error(tmp_path: Path) -> None:
    """A file named by --config or the variable must exist; the message says who named it."""
    missing = tmp_path / "missing.toml"
    assert error(["--config", str(missing)]) == f"--config: config file {missing} does not exist"
    assert error((), {**IDS, CONFIG_FILE_ENV: str(missing)}) == (
        f"{CONFIG_FILE_ENV}: config file {missing} does not exist"
    )


def test_a_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    """Invalid TOML is one line naming the file and where the parser stopped."""
    path = write(tmp_path, "[worker]\nfarm_id = \n")
    assert error((), IDS, path) == f"{path}: not valid TOML: Invalid value (at line 2, column 11)"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    """Naming a directory as the config file is a clear error."""
    assert error(["--config", str(tmp_path)]) == f"{tmp_path}: is a directory, not a config file"


def test_the_removed_impersonation_key_is_an_error(tmp_path: Path) -> None:
    """``[os] impersonation`` is refused as by the official agent, pointing at its replacement."""
    path = write(tmp_path, "[os]\nimpersonation = false")
    assert error((), IDS, path) == (
        f"{path}: [os] impersonation: this option has been removed; "
        "use run_jobs_as_agent_user instead"
    )


def test_a_section_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    """``worker = 1`` at the top level is an error naming the section."""
    path = write(tmp_path, "worker = 1")
    assert error((), IDS, path) == f"{path}: [worker] must be a table, got 1"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[logging]\nverbose = "maybe"',
         "[logging] verbose: expected a boolean (true/false, yes/no, on/off, 1/0), got 'maybe'"),
        ("[logging]\nhost_metrics_logging_interval_seconds = 0",
         "[logging] host_metrics_logging_interval_seconds: must be greater than 0, got 0"),
        ("[logging]\nhost_metrics_logging_interval_seconds = true",
         "[logging] host_metrics_logging_interval_seconds: expected a number, got True"),
        ('[worker]\nfarm_id = "farm-123"',
         "[worker] farm_id: expected farm-<32 lower-case letters or digits>, got 'farm-123'"),
        ("[worker]\nworker_persistence_dir = 5",
         "[worker] worker_persistence_dir: expected a string, got 5"),
        ('[os]\nposix_job_user = "justauser"',
         "[os] posix_job_user: expected user:group, got 'justauser'"),
        ('[worker]\nsession_runtime = "java"',
         "[worker] session_runtime: expected one of python, rust, service-selected, got 'java'"),
        ("[worker]\nexit_after_jobs = 0", "[worker] exit_after_jobs: must be at least 1, got 0"),
        ("[worker]\nexit_after_jobs = 1.5", "[worker] exit_after_jobs: expected an integer, got 1.5"),
        ("[worker]\nhealth_port = 70000",
         "[worker] health_port: expected a port number from 0 to 65535, got 70000"),
        ('[worker]\nhealth_address = "not an address"',
         "[worker] health_address: expected an IP address or host name, got 'not an address'"),
        ('[aws]\nendpoint_url = "localhost:8080"',
         "[aws] endpoint_url: expected an http:// or https:// URL, got 'localhost:8080'"),
        ('[aws]\nprofile = ""',
         "[aws] profile: expected an AWS profile name of 1 to 64 characters, got ''"),
        ('[logging]\nlog_format = "xml"',
         "[logging] log_format: expected one of json, console, got 'xml'"),
        ('[logging]\nsecret_patterns = ["("]',
         "[logging] secret_patterns: item 0: '(' is not a regular expression: "
         "missing ), unterminated subpattern at position 0"),
        ('[logging]\nsecret_patterns = ["a*"]',
         "[logging] secret_patterns: item 0: 'a*' matches the empty string"),
        ("[worker]\ndrain_grace_seconds = -1",
         "[worker] drain_grace_seconds: must be at least 0, got -1"),
        ("[worker]\nidle_timeout = nan", "[worker] idle_timeout: expected a finite number, got nan"),
        ("[aws]\nimds_interval_seconds = 0",
         "[aws] imds_interval_seconds: must be greater than 0, got 0"),
    ],
)  # fmt: skip
def test_a_bad_file_value_names_the_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    """A wrong type or an invalid value in the file is one line naming file, section and key."""
    path = write(tmp_path, toml)
    assert error((), IDS, path) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--farm-id", "farm-XYZ"], {},
         "--farm-id: expected farm-<32 lower-case letters or digits>, got 'farm-XYZ'"),
        (["--health-port", "http"], {}, "--health-port: expected an integer, got 'http'"),
        (["--log-format", "yaml"], {}, "--log-format: expected one of json, console, got 'yaml'"),
        (["--secret-pattern", "ok", "--secret-pattern", "[a-"], {},
         "--secret-pattern: item 1: '[a-' is not a regular expression: "
         "unterminated character set at position 0"),
        ([], {"DEADLINE_WORKER_VERBOSE": "sure"},
         "DEADLINE_WORKER_VERBOSE: expected a boolean (true/false, yes/no, on/off, 1/0), got 'sure'"),
        ([], {"DEADLINE_WORKER_FLEET_ID": "fleet-"},
         "DEADLINE_WORKER_FLEET_ID: expected fleet-<32 lower-case letters or digits>, got 'fleet-'"),
        ([], {"DEADLINE_WORKER_HOST_METRICS_LOGGING_INTERVAL_SECONDS": "-5"},
         "DEADLINE_WORKER_HOST_METRICS_LOGGING_INTERVAL_SECONDS: must be greater than 0, got '-5'"),
        ([], {"DEADLINE_WORKER_SECRET_PATTERNS": "tok-.*"},
         'DEADLINE_WORKER_SECRET_PATTERNS: expected a JSON list of regular expressions, '
         'e.g. ["tok-[0-9a-f]+"]'),
        ([], {"DEADLINE_WORKER_MIN_SECRET_LENGTH": "0"},
         "DEADLINE_WORKER_MIN_SECRET_LENGTH: must be at least 1, got '0'"),
        ([], {"DEADLINE_WORKER_WINDOWS_JOB_USER_PASSWORD_ARN": "arn:aws:s3:::bucket"},
         "DEADLINE_WORKER_WINDOWS_JOB_USER_PASSWORD_ARN: expected a Secrets Manager secret ARN, "
         "got 'arn:aws:s3:::bucket'"),
    ],
)  # fmt: skip
def test_a_bad_flag_or_variable_is_named(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    """A bad value on the command line or in the environment names the flag or variable."""
    assert error(argv, {**IDS, **environ}) == message


def test_missing_ids_say_every_place_to_set_them(tmp_path: Path) -> None:
    """Without a farm id the message lists the flag, the variable and the file key."""
    assert error((), {}) == (
        "farm_id is not set: pass --farm-id, set DEADLINE_WORKER_FARM_ID, "
        "or set [worker] farm_id in worker.toml"
    )
    path = write(tmp_path, "[worker]\n")
    assert error((), {"DEADLINE_WORKER_FARM_ID": FARM}, path) == (
        "fleet_id is not set: pass --fleet-id, set DEADLINE_WORKER_FLEET_ID, "
        f"or set [worker] fleet_id in {path}"
    )


def test_a_job_user_conflicts_with_running_as_the_agent(tmp_path: Path) -> None:
    """posix_job_user with run_jobs_as_agent_user is refused, naming where each was set."""
    path = write(tmp_path, '[os]\nposix_job_user = "render:render"')
    assert error(["--run-jobs-as-agent-user"], IDS, path) == (
        f"{path}: [os] posix_job_user: a posix job user cannot be set when jobs run as the "
        "agent user (--run-jobs-as-agent-user)"
    )


def test_windows_job_user_is_parsed_and_ignored_with_a_note() -> None:
    """On POSIX a Windows job user is checked, then ignored with a warning naming it."""
    config = load(["--windows-job-user", "render"], IDS)
    assert config.windows_job_user == "render"
    assert config.warnings == (
        "--windows-job-user: windows_job_user is ignored on this platform; use posix_job_user",
    )


def test_session_runtime_is_accepted_and_ignored_with_a_note() -> None:
    """--session-runtime is valid for compatibility and produces one note."""
    config = load(["--session-runtime", "service-selected"])
    assert config.session_runtime == "service-selected"
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith("--session-runtime: session_runtime=service-selected")


def test_log_format_follows_structured_logs_unless_given() -> None:
    """structured_logs picks json by default; an explicit log_format wins."""
    assert load(["--structured-logs"]).log_format == "json"
    assert load(["--structured-logs", "--log-format", "console"]).log_format == "console"
    assert load((), {**IDS, "DEADLINE_WORKER_LOG_FORMAT": "json"}).log_format == "json"


# --- capabilities -------------------------------------------------------------------------------


def test_capabilities_variable_replaces_the_file_tables(tmp_path: Path) -> None:
    """DEADLINE_WORKER_CAPABILITIES (the official JSON form) replaces the file's tables whole."""
    path = write(tmp_path, '[capabilities.amounts]\n"amount.slots" = 4\n')
    environ = {
        **IDS,
        "DEADLINE_WORKER_CAPABILITIES": '{"amounts": {"amount.apples": 12}, '
        '"attributes": {"attr.license_servers": ["green_internal"]}}',
    }
    config = load((), environ, path)
    assert config.capabilities == Capabilities(
        {"amount.apples": 12}, {"attr.license_servers": ["green_internal"]}
    )
    assert config.origins["capabilities"] == "DEADLINE_WORKER_CAPABILITIES"
    assert load((), IDS, path).capabilities == Capabilities({"amount.slots": 4})


def test_capabilities_may_override_standard_names(tmp_path: Path) -> None:
    """Standard names (amount.worker.gpu, attr.worker.os.family) may be configured."""
    path = write(
        tmp_path,
        '[capabilities.amounts]\n"amount.worker.gpu" = 0\n'
        '[capabilities.attributes]\n"attr.worker.os.family" = ["linux"]\n',
    )
    caps = load((), IDS, path).capabilities
    assert caps.amounts == {"amount.worker.gpu": 0.0}
    assert caps.attributes == {"attr.worker.os.family": ("linux",)}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[capabilities.amounts]\n"slots" = 1',
         "[capabilities.amounts] 'slots': Value is not a valid Capability name: slots"),
        ('[capabilities.amounts]\n"attr.slots" = 1',
         "[capabilities.amounts] 'attr.slots': Capability name after the vendor prefix must "
         "start with 'amount.': attr.slots"),
        ('[capabilities.amounts]\n"amount.worker.slots" = 1',
         "[capabilities.amounts] 'amount.worker.slots': Only Open Job Description defined "
         "capabilities may start with 'amount.worker': amount.worker.slots"),
        ('[capabilities.amounts]\n"amount.slots" = -1',
         "[capabilities.amounts] 'amount.slots': must not be negative, got -1"),
        ('[capabilities.amounts]\n"amount.slots" = "many"',
         "[capabilities.amounts] 'amount.slots': expected a number, got 'many'"),
        ('[capabilities.attributes]\n"attr.groups" = "maya"',
         "[capabilities.attributes] 'attr.groups': expected a list of labels, got 'maya'"),
        ('[capabilities.attributes]\n"attr.groups" = []',
         "[capabilities.attributes] 'attr.groups': expected 1 to 10 labels"),
        ('[capabilities.attributes]\n"attr.version" = ["2024"]',
         "[capabilities.attributes] 'attr.version': label '2024' must be a letter or '_' "
         "followed by letters, digits, '_' or '-' (at most 100 characters)"),
        ("[capabilities]\namounts = 3",
         "[capabilities.amounts]: expected a table of name = number"),
    ],
)  # fmt: skip
def test_bad_capabilities_in_the_file_are_named(tmp_path: Path, table: str, message: str) -> None:
    """Capability names are checked with openjd-model and values as the API takes them."""
    path = write(tmp_path, table)
    assert error((), IDS, path) == f"{path}: {message}"


def test_too_many_custom_capabilities_are_refused(tmp_path: Path) -> None:
    """UpdateWorker takes 17 amounts, so at most 12 custom ones fit beside the 5 standard."""
    lines = "".join(f'"amount.a{i}" = 1\n' for i in range(13))
    path = write(tmp_path, "[capabilities.amounts]\n" + lines)
    assert error((), IDS, path) == (
        f"{path}: [capabilities.amounts]: at most 12 custom amount capabilities, got 13 "
        "(UpdateWorker takes 17 including the 5 standard ones)"
    )
    path = write(tmp_path, "[capabilities.amounts]\n" + lines.split("\n", 1)[1])
    assert len(load((), IDS, path).capabilities.amounts) == 12


def test_unknown_capabilities_keys_are_warnings(tmp_path: Path) -> None:
    """A key beside ``amounts``/``attributes`` in ``[capabilities]`` is named in a warning."""
    path = write(tmp_path, "[capabilities]\namount = 1")
    assert load((), IDS, path).warnings == (
        f"{path}: [capabilities] amount: unknown key ignored (capabilities go in "
        "[capabilities.amounts] and [capabilities.attributes])",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{amounts}", "not valid JSON: Expecting property name enclosed in double quotes: "
         "line 1 column 2 (char 1)"),
        ("[]", 'expected a JSON object {"amounts": {}, "attributes": {}}'),
        ('{"amount": {}}', "unknown member 'amount' (expected amounts, attributes)"),
        ('{"amounts": {"amount.x": true}}', "amounts 'amount.x': expected a number, got True"),
        ('{"attributes": {"amount.x": ["a"]}}',
         "attributes 'amount.x': Capability name after the vendor prefix must start with "
         "'attr.': amount.x"),
    ],
)  # fmt: skip
def test_bad_capabilities_variable_is_named(text: str, message: str) -> None:
    """DEADLINE_WORKER_CAPABILITIES problems name the variable and the member."""
    environ = {**IDS, "DEADLINE_WORKER_CAPABILITIES": text}
    assert error((), environ) == f"DEADLINE_WORKER_CAPABILITIES: {message}"


def test_capabilities_merge_per_name_and_render_for_the_api() -> None:
    """``merged`` lets the override win per name; ``to_api`` is the UpdateWorker wire form."""
    detected = Capabilities(
        {"amount.worker.vcpu": 8, "amount.worker.gpu": 1}, {"attr.worker.os.family": ["linux"]}
    )
    merged = detected.merged(Capabilities({"amount.worker.gpu": 0, "amount.slots": 2}))
    assert merged.to_api() == {
        "amounts": [
            {"name": "amount.slots", "value": 2.0},
            {"name": "amount.worker.gpu", "value": 0.0},
            {"name": "amount.worker.vcpu", "value": 8.0},
        ],
        "attributes": [{"name": "attr.worker.os.family", "values": ["linux"]}],
    }


def test_a_bad_value_is_an_error_even_when_overridden(tmp_path: Path) -> None:
    """A bad file value fails although the environment overrides it (as the official agent's
    file validation does), so removing the override later cannot surprise."""
    path = write(tmp_path, '[worker]\nfarm_id = "farm-123"')
    assert error((), IDS, path) == (
        f"{path}: [worker] farm_id: expected farm-<32 lower-case letters or digits>, got 'farm-123'"
    )


def test_every_setting_has_a_reader() -> None:
    """A setting nothing reads is a bug (it is accepted and silently ignored): each one
    is read somewhere in the code as an attribute (``config.name``) or a key
    (``values["name"]``), outside the table that declares it."""
    import ast

    from agent.worker._config import _SETTINGS

    names = {setting.name for setting in _SETTINGS}
    read: set[str] = set()
    root = Path(__file__).resolve().parents[3]
    for package in ("agent", "actors", "contrib"):
        for path in (root / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            # The table's own strings (names, TOML keys) are declarations, not reads.
            declared = {
                id(inner)
                for node in ast.walk(tree)
                if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "_Setting"
                for inner in ast.walk(node)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in names:
                    read.add(node.attr)
                elif (
                    isinstance(node, ast.Constant)
                    and node.value in names
                    and id(node) not in declared
                ):
                    read.add(node.value)
    assert sorted(names - read) == []


def test_the_session_memory_limit_is_a_size(tmp_path: Path) -> None:
    """Flag, variable or worker.toml, in binary units; nonsense is one clear error."""
    assert load(["--session-memory-limit", "4GiB"]).session_memory_limit == 4 * 2**30
    variable = {**IDS, "DEADLINE_WORKER_SESSION_MEMORY_LIMIT": "512M"}
    assert load(environ=variable).session_memory_limit == 512 * 2**20
    file = write(tmp_path, "[worker]\nsession_memory_limit = 1073741824\n")
    assert load(file=file).session_memory_limit == 2**30
    assert load().session_memory_limit is None
    message = error(["--session-memory-limit", "lots"])
    assert "--session-memory-limit" in message and "expected a size such as 4GiB" in message


def test_the_action_output_limit_and_its_mode() -> None:
    config = load(["--action-output-limit", "10M", "--action-output-limit-mode", "fail"])
    assert (config.action_output_limit, config.action_output_limit_mode) == (10 * 2**20, "fail")
    assert load().action_output_limit_mode == "truncate"
    assert "truncate" in error(["--action-output-limit-mode", "explode"])


def test_the_pause_settings_default_to_off_and_parse_from_every_source(tmp_path: Path) -> None:
    """The failure throttle, work hours and idle detection (issue 14): off by default;
    flag, variable or worker.toml; a bad value is one line naming where it came from."""
    config = load()
    assert (config.failure_throttle, config.work_hours, config.only_when_user_idle) == (
        None,
        None,
        False,
    )
    assert (config.failure_cooldown_seconds, config.when_user_returns) == (600, "cancel")
    flags = load(
        ["--failure-throttle", "4/10m", "--failure-cooldown", "60", "--work-hours", "Sat-Sun",
         "--only-when-user-idle", "--when-user-returns", "finish"]
    )  # fmt: skip
    assert flags.failure_throttle == ThrottleRule(4, 600)
    assert flags.failure_cooldown_seconds == 60
    assert str(flags.work_hours) == "Sat-Sun 00:00-24:00"
    assert (flags.only_when_user_idle, flags.when_user_returns) == (True, "finish")
    variables = load(
        environ={
            **IDS,
            "DEADLINE_WORKER_FAILURE_THROTTLE": "3/60",
            "DEADLINE_WORKER_WORK_HOURS": "Mon 18:00-23:00, Tue 18:00-23:00",
            "DEADLINE_WORKER_ONLY_WHEN_USER_IDLE": "yes",
        }
    )
    assert variables.failure_throttle == ThrottleRule(3, 60)
    assert variables.work_hours is not None and len(variables.work_hours.windows) == 2
    assert variables.only_when_user_idle is True
    assert error(["--work-hours", "Mon-Fri 7pm-7am"]) == (
        "--work-hours: 'Mon-Fri 7pm-7am': '7pm' is not a time (HH:MM, 24-hour clock)"
    )
    assert error(["--failure-throttle", "1/60"]).startswith(
        "--failure-throttle: N must be at least 2"
    )
    file = write(tmp_path, '[worker]\nwhen_user_returns = "kill"\n')
    assert error(file=file) == (
        f"{file}: [worker] when_user_returns: expected one of finish, cancel, got 'kill'"
    )
