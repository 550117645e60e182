"""A CPU platform for verl's platform registry, so verl's FSDP engine runs in CPU-only CI.

verl 0.9.1 registers only accelerator platforms (nvidia, huawei, amd) and falls back to CUDA
when none is present; its documented extension point is PlatformRegistry.register plus the
VERL_PLATFORM variable. Torch's CPU device stands in for the accelerator (gloo collectives).
In a Ray cluster, Ray's logical "GPU" resource stands for one CPU slot (start Ray with
num_gpus=N on a CPU machine): verl's resource pools ask for that resource by name.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch
import verl.workers.engine_workers as _engine_workers
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry


def _no_stats(*args, **kwargs) -> int:
    return 0  # the CPU allocator keeps no device-memory statistics


# torch.cpu plus the allocator queries verl's engines log after each step.
_CPU_MODULE = SimpleNamespace(
    **{name: getattr(torch.cpu, name) for name in dir(torch.cpu) if not name.startswith("_")},
    empty_cache=lambda: None, memory_allocated=_no_stats, memory_reserved=_no_stats,
    max_memory_allocated=_no_stats, max_memory_reserved=_no_stats,
    mem_get_info=lambda *args: (0, 0), get_rng_state=torch.get_rng_state,
    set_rng_state=torch.set_rng_state, manual_seed=torch.manual_seed,
    get_device_name=lambda *args: "cpu")


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    device_name = "cpu"
    vendor_name = "cpu"
    device_module = _CPU_MODULE

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:
        return "cpu"  # used as a .to() target by verl's engines

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        pass

    def synchronize(self, device_index=None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"  # a logical Ray resource here (see the module docstring)

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


def _gloo_backend(initialize):
    """verl's workers start their process group with the backend "cpu:gloo,<device>:<backend>",
    which for the device cpu names cpu twice (torch rejects it): on CPU it is gloo alone."""

    def initialize_on_cpu(timeout_second=None, backend=None):
        return initialize(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    return initialize_on_cpu


_engine_workers.initialize_global_process_group_ray = _gloo_backend(
    _engine_workers.initialize_global_process_group_ray)
