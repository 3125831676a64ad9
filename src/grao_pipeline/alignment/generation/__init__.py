"""Generation, kept apart from training: the ``Sampler`` (what generation runs on and its
decode loop, decided once), sampling and greedy decoding, the packed sampling copy, the
lean Llama decode loop and the fused CPU kernel. Training and evaluation both use it;
it imports nothing of either."""

from grao_pipeline.alignment.generation.sampler import Sampler, build_sampler
from grao_pipeline.alignment.generation.sampling import Samples

__all__ = ["Sampler", "Samples", "build_sampler"]
