"""What the build compiled in: CI sets CONVX_EXPECT_CUDA=1 when it built with nvcc."""
import os

import pytest

import convx


def test_cuda_compiled_in_when_expected():
    if os.environ.get("CONVX_EXPECT_CUDA") != "1":
        pytest.skip("CONVX_EXPECT_CUDA is not 1: this build was not required to include CUDA")
    assert convx.has_cuda, "the build was expected to compile the CUDA kernels (CONVX_EXPECT_CUDA=1), but did not"


def test_cuda_build_info_matches_has_cuda():
    assert hasattr(convx._C, "cuda_build_info") == convx.has_cuda
    if convx.has_cuda:
        assert convx._C.cuda_build_info().startswith("CUDA ")
