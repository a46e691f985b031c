"""Sample data for napari-roiseg: a seeded infant-hip ultrasound phantom and loaders for the small
sets of real ultrasound kept beside the repository (``../shared/data``).

Nothing here imports torch or napari. Import the submodules you need, e.g.
``from sample_data.phantom import make_phantom``.
"""

__all__: list[str] = []
