"""Plumbing for the course: data, seeding, devices, results, timing, parity, plotting.

The lessons' own code (models, training loops, ``jax.grad``, ``model.fit``) lives in the
notebooks; this package holds only what is not the lesson. Importing it imports no
deep-learning framework: each helper imports the framework it needs when it is called.
"""

__version__ = "0.1.0"
