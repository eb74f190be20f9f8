"""Loading Chronos-2: local safetensors checkpoints, pinned revisions, a clear error offline, random checkpoints."""

import json

import pytest

from forecasting_pipeline.cli import main
from forecasting_pipeline.forecasting.model import (
    GEOMETRIES,
    ModelUnavailableError,
    load_chronos2,
)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_when_a_local_checkpoint_loads_then_model_version_names_package_path_revision_dtype_and_random_weights(
    dtype, tiny_checkpoint
):
    loaded = load_chronos2(str(tiny_checkpoint), revision="v-test", dtype=dtype)

    assert loaded.version == f"chronos-forecasting==2.3.2 {tiny_checkpoint.resolve()}@v-test {dtype} RANDOM-WEIGHTS"
    assert loaded.device == "cpu" and loaded.dtype == dtype


def test_when_no_revision_is_pinned_for_a_local_checkpoint_then_a_hash_of_its_weights_is_recorded(tiny_checkpoint):
    loaded = load_chronos2(str(tiny_checkpoint))

    assert loaded.revision.startswith("sha256:") and len(loaded.revision) == len("sha256:") + 12


def test_when_the_model_hub_is_unreachable_then_the_error_says_so_and_how_to_use_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ModelUnavailableError) as error:
        load_chronos2("amazon/chronos-2", revision="abc123")

    message = str(error.value)
    assert "Could not fetch Chronos-2 model 'amazon/chronos-2' at revision 'abc123' from the model hub" in message
    assert "CHRONOS2_MODEL" in message and "local checkpoint directory" in message


def test_when_a_path_does_not_exist_then_it_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(ModelUnavailableError, match="looks like a path but is not a directory"):
        load_chronos2(str(tmp_path / "missing"))


def test_when_init_model_writes_a_tiny_checkpoint_then_its_config_says_the_weights_are_random(tmp_path, capsys):
    assert main(["init-model", "--size", "tiny", str(tmp_path / "ck")]) == 0

    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["random_weights"] is True
    assert "RANDOM WEIGHTS" in config["random_weights_note"]
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    assert load_chronos2(str(tmp_path / "ck")).random_weights


def test_when_the_full_geometry_is_built_then_it_has_the_published_parameter_count():
    import torch
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    from forecasting_pipeline.forecasting.model import _CHRONOS_CONFIG

    with torch.device("meta"):  # shapes only: no 478 MB allocation
        model = Chronos2Model(
            Chronos2CoreConfig(**GEOMETRIES["full"], chronos_config=dict(_CHRONOS_CONFIG), architectures=["Chronos2Model"])
        )

    assert sum(p.numel() for p in model.parameters()) == 119_477_664
    assert len(_CHRONOS_CONFIG["quantiles"]) == 21
