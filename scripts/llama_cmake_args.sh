# Sourced by scripts/setup.sh (llama-cpp-python) and benchmarks/build_llama_server.sh
# (llama.cpp's llama-server): llama.cpp built for any x86-64 CPU with AVX2 rather than for
# this one (-march=native), with no AVX-512 and no AMX kernels. ggml's AMX matrix product
# crashed on CPUs that have AMX: at the first decode in llama-cpp-python, and at model
# load in a natively built llama-server; the same release built this way ran there.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
