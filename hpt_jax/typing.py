"""The one place array type aliases come from (used in every signature of the package)."""

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PRNGKey = jax.Array
