from pathlib import Path

import pytest

from metaray.cluster.config import (
    ConfigError,
    apply_overrides,
    load_config,
    parse_override,
    to_yaml,
    validate,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = {"algo": "rl2", "task": {"family": "bandit"}}


def test_quickstart_config_loads_and_round_trips(tmp_path):
    config = load_config(ROOT / "configs" / "quickstart.yaml")
    assert config.algo == "rl2" and config.task.family == "bandit"
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(config))
    assert load_config(saved) == config


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_names_a_buildable_family(path):
    from metaray.tasks import make_family

    config = load_config(path)
    config.algo_config()
    family = make_family(config.task.family, config.task.kwargs)
    assert family.max_episode_steps >= 1


def test_overrides_are_typed_like_yaml():
    assert parse_override("rl2.lr=1e-3") == (["rl2", "lr"], "1e-3")  # YAML 1.1: a string...
    config = validate(apply_overrides(BASE, ["rl2.lr=1e-3", "rl2.hidden_size=64", "task.kwargs={num_arms: 3}"]))
    assert config.rl2.lr == pytest.approx(1e-3)  # ...that the float field accepts
    assert config.rl2.hidden_size == 64
    assert config.task.kwargs == {"num_arms": 3}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({**BASE, "rl2": {"learning_rate": 1}}, "rl2.learning_rate: unknown key"),
        ({**BASE, "rl2": {"hidden_size": "big"}}, "rl2.hidden_size: input should be a valid integer"),
        ({**BASE, "rl2": {"gamma": 1.5}}, "rl2.gamma: input should be less than or equal to 1 (got 1.5)"),
        ({**BASE, "workers": {"num_workers": 0}}, "workers.num_workers: input should be greater than or equal to 1"),
        ({**BASE, "algo": "dqn"}, "algo: unknown algo 'dqn' (known: rl2, maml, adversarial"),
        ({"algo": "rl2"}, "task: required key is missing"),
        ({"name": "smoke", "seeds": [0], "runs": [{"name": "a", "config": "configs/quickstart.yaml"}]},
         "a bench suite (it lists runs), not a training config: `metaray bench` runs it"),
        ({**BASE, "learner": {"device": "tpu"}}, "learner.device: input should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data, fragment):
    with pytest.raises(ConfigError) as err:
        validate(data)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_override_into_a_value_is_rejected():
    with pytest.raises(ConfigError, match="rl2.lr is not a section"):
        apply_overrides({**BASE, "rl2": {"lr": 0.1}}, ["rl2.lr.x=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides(BASE, ["rl2.lr"])


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: rl2\ntask: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
