"""Sharded decoder on a (2, 4) mesh of fake CPU devices == unsharded."""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from flax import nnx
import numpy as np

from genrec_jax.models import decoder
from genrec_jax.training import sharding

CFG = decoder.DecoderConfig(
    vocab_size=64, hidden_size=16, intermediate_size=24, num_layers=2,
    num_heads=4, num_kv_heads=2, model_type="qwen2", attention_bias=True)


def _forward(model, ids):
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state, ids):
    return nnx.merge(graphdef, state)(ids)

  return f(state, ids)


def test_mesh_helper():
  mesh = sharding.make_mesh((2, -1), ("fsdp", "tensor"))
  assert dict(mesh.shape) == {"fsdp": 2, "tensor": 4}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_sharded_forward_matches_unsharded():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh((2, 4), ("fsdp", "tensor"))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 7)),
                    jnp.int32)
  model = sharding.create_sharded_model(
      lambda: decoder.Decoder(CFG, rngs=nnx.Rngs(0)), mesh)
  graphdef, state = nnx.split(model)
  ref_model = nnx.merge(graphdef, jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x)), state))  # one device
  assert len(ref_model.layers.q[...].devices()) == 1
  want = _forward(ref_model, ids)
  specs = {
      ("embed",): P("tensor", "fsdp"),
      ("layers", "q"): P(None, "fsdp", "tensor", None),
      ("layers", "k"): P(None, "fsdp", None, None),  # 2 kv heads on 4: repl.
      ("layers", "o"): P(None, "tensor", None, "fsdp"),
      ("layers", "gate"): P(None, "fsdp", "tensor"),
      ("layers", "down"): P(None, "tensor", "fsdp"),
      ("final_norm",): P(None),
  }
  flat = {tuple(str(x) for x in p): v[...]
          for p, v in nnx.to_flat_state(nnx.state(model))}
  for path, spec in specs.items():
    assert flat[path].sharding.spec == spec, (path, flat[path].sharding)
  sharded_ids = jax.device_put(ids, sharding.batch_sharding(mesh, 2))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    got = _forward(model, sharded_ids)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # shard_model on an already built (unsharded) model gives the same specs.
  m2 = sharding.shard_model(ref_model, mesh)
  assert m2.layers.q[...].sharding.spec == specs[("layers", "q")]
  with jax.set_mesh(mesh):
    got2 = _forward(m2, sharded_ids)
  np.testing.assert_allclose(np.asarray(got2), np.asarray(want), atol=1e-5)
