"""The compute dtype: bf16 where torch reports bf16 matrix support on the device, fp32 elsewhere, `--dtype` chooses."""

from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from fimtune.config import ConfigError  # noqa: E402
from fimtune.models import ModelError, bf16_supported, resolve_dtype  # noqa: E402
from fimtune.train.config import TrainConfig  # noqa: E402


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set what torch reports about the CPU (x86: AVX512-BF16 and AMX)."""

    def set_support(avx512_bf16: bool, amx: bool = False) -> None:
        monkeypatch.setattr("platform.machine", lambda: "x86_64")
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return set_support


def test_auto_follows_what_torch_reports(cpu_bf16: Callable[..., None]) -> None:
    cpu_bf16(True)
    assert bf16_supported("cpu") and resolve_dtype("auto", "cpu") == "bf16"
    cpu_bf16(False, amx=True)
    assert resolve_dtype("auto", "cpu") == "bf16"
    cpu_bf16(False)
    assert not bf16_supported("cpu") and resolve_dtype("auto", "cpu") == "fp32"
    assert resolve_dtype("fp32", "cpu") == "fp32"


def test_bf16_asked_for_where_there_is_none_is_a_clear_error(cpu_bf16: Callable[..., None]) -> None:
    cpu_bf16(False)
    with pytest.raises(ModelError, match=r"--dtype bf16: torch reports no bf16 matrix support on cpu; use --dtype"):
        resolve_dtype("bf16", "cpu")
    with pytest.raises(ModelError, match=r"--dtype: must be one of auto, fp32, bf16, not 'fp16'"):
        resolve_dtype("fp16", "cpu")


def test_train_config_names_a_bad_dtype() -> None:
    cfg = TrainConfig(corpus="c", base_model="tiny", out="o", dtype="half")
    with pytest.raises(ConfigError, match=r"dtype: must be one of auto, fp32, bf16, not 'half'"):
        cfg.validate()


def test_seq_len_zero_is_the_base_models_limit_at_most_2048() -> None:
    cfg = TrainConfig(corpus="c", base_model="tiny", out="o")
    cfg.validate()
    assert cfg.resolved_seq_len(1024) == 1024 and cfg.resolved_seq_len(8192) == 2048
    assert cfg.resolved_seq_len(None) == 2048
    assert TrainConfig(seq_len=512).resolved_seq_len(1024) == 512


def test_local_engine_loads_the_dtype_asked_for(cpu_bf16: Callable[..., None]) -> None:
    from fimtune.engines.base import EngineError, EngineSettings
    from fimtune.engines.local import LocalEngine

    assert LocalEngine(EngineSettings(base_model="tiny", device="cpu", dtype="fp32")).dtype == torch.float32
    cpu_bf16(True)
    engine = LocalEngine(EngineSettings(base_model="tiny", device="cpu", dtype="auto"))
    assert engine.dtype == torch.bfloat16 and next(engine.model.parameters()).dtype == torch.bfloat16
    cpu_bf16(False)
    assert LocalEngine(EngineSettings(base_model="tiny", device="cpu")).dtype == torch.float32
    with pytest.raises(EngineError, match=r"local engine: dtype bf16: torch reports no bf16"):
        LocalEngine(EngineSettings(base_model="tiny", device="cpu", dtype="bf16"))
