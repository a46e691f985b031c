"""Suite-wide set-up.

torchvision is imported before any napari canvas exists: CUDA builds of torch ship triton, whose
bundled LLVM crashes a process in which Mesa's software OpenGL (Xvfb) has already loaded the
system libLLVM. The application avoids this with ``napari_roiseg.api.prepare_torch_import``; the
suite imports torchvision first so no test depends on collection order.
"""

import torchvision  # noqa: F401
