"""The installed environment: the pieces later steps stand on import and work together."""

import importlib.metadata

from tests.helpers import run_with_devices


def test_pinned_stack_imports_together():
    import jax
    import numpy as np

    assert int(np.__version__.split(".")[0]) >= 2  # JAX needs numpy 2 ...
    assert jax.numpy.ones(3).sum() == 3
    # ... which is why mplib (0.1.1 segfaults under numpy 2; 0.2.1 needs numpy<2) must be absent.
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert "mplib" not in names
    assert importlib.metadata.version("mani-skill").startswith("3.")
    assert importlib.metadata.version("torch").startswith("2.13.0")


def test_eight_simulated_devices_in_a_subprocess():
    out = run_with_devices(
        """
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        assert jax.device_count() == 8, jax.devices()
        mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
        x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P(("data", "fsdp"))))
        assert len(x.addressable_shards) == 8
        print(float(jax.jit(lambda a: (a * 2).sum())(x)))
        """
    )
    assert out.stdout.strip() == str(float(2 * sum(range(32))))
