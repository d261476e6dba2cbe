// 3x3 SAME stride-1 convolution through oneDNN, as XLA FFI handlers.
//
// XLA:CPU has no fast convolution (jax-ml/jax#31662); PyTorch's CPU conv is
// oneDNN. These handlers give JAX the same kernels: forward (bias and ReLU
// fused), and backward (input, weight and bias gradients, or the last two).
//
// Activations arrive in oneDNN's channel-blocked layout, as JAX arrays
// [N, C/cb, H, W, cb]: cb = 16 or 8 (nChw16c, nChw8c), or 1 (NCHW, for the
// image and widths that are not multiples of 8). The Python side
// (vgg_jax/models/onednn.py) converts between NHWC and that layout with XLA
// transposes, which fuse with the elementwise work around them. Weights are HWIO [3, 3, Cin, Cout], as in flax; each call reorders
// them to the kernel's preferred format (they are small next to activations).
//
// Built on first use by vgg_jax/models/onednn.py (g++, and oneDNN from pip or
// the system).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <new>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_version.h"
#include "xla/ffi/api/ffi.h"

// Both oneDNN APIs build: 3.x (pip's onednn-cpu-gomp, which pyproject.toml
// depends on, and newer distributions) and 2.x (Debian 12's libdnnl-dev 2.6).
// 3.x dropped the operation descriptors: primitive descriptors take the
// engine and the operands directly.
#if DNNL_VERSION_MAJOR < 2 || DNNL_VERSION_MAJOR > 3
#error "vgg_jax supports oneDNN 2.x and 3.x"
#endif

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Scratch space owned by the calling thread, grown as needed and kept, so
// that steady-state steps allocate nothing (fresh multi-megabyte allocations
// cost page faults on every call).
struct Scratch {
  void* Get(size_t slot, size_t bytes) {
    if (slot >= buffers.size()) buffers.resize(slot + 1);
    auto& b = buffers[slot];
    if (b.second < bytes) {
      std::free(b.first);
      b.first = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      b.second = 0;
      if (!b.first) throw std::bad_alloc();
      b.second = bytes;
    }
    return b.first;
  }
  ~Scratch() {
    for (auto& b : buffers) std::free(b.first);
  }
  std::vector<std::pair<void*, size_t>> buffers;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

struct Shape {
  int64_t n, h, w, cin, cout, cb_in, cb_out;
  bool relu;
  auto Key() const { return std::make_tuple(n, h, w, cin, cout, cb_in, cb_out, relu); }
};

tag ActivationTag(int64_t cb) {
  // Blocked tags even where C == cb (physically NHWC): oneDNN's JIT kernels
  // match them where a plain nhwc tag falls back to reference code.
  if (cb == 16) return tag::nChw16c;
  if (cb == 8) return tag::nChw8c;
  if (cb == 1) return tag::nchw;  // The image: the first-layer kernels read NCHW.
  return tag::undef;
}

memory::desc Activation(const Shape& s, int64_t c, int64_t cb) {
  return memory::desc({s.n, c, s.h, s.w}, memory::data_type::f32, ActivationTag(cb));
}

memory::desc UserWeights(const Shape& s) {  // HWIO
  return memory::desc({s.cout, s.cin, 3, 3}, memory::data_type::f32, tag::hwio);
}

memory::desc AnyWeights(const Shape& s) {
  return memory::desc({s.cout, s.cin, 3, 3}, memory::data_type::f32, tag::any);
}

memory::desc Bias(const Shape& s) {
  return memory::desc({s.cout}, memory::data_type::f32, tag::x);
}

dnnl::primitive_attr Attr(bool relu) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops ops;
#if DNNL_VERSION_MAJOR >= 3
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
#else
    ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
#endif
    attr.set_post_ops(ops);
  }
  return attr;
}

const memory::dims kOnes = {1, 1};

dnnl::convolution_forward::primitive_desc ForwardPd(const Shape& s) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activation(s, s.cin, s.cb_in), AnyWeights(s), Bias(s), Activation(s, s.cout, s.cb_out),
      kOnes, kOnes, kOnes, Attr(s.relu));
#else
  dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activation(s, s.cin, s.cb_in), AnyWeights(s), Bias(s), Activation(s, s.cout, s.cb_out),
      kOnes, kOnes, kOnes);
  return dnnl::convolution_forward::primitive_desc(desc, Attr(s.relu), Engine());
#endif
}

// One compiled primitive per layer shape, with the reorder between the
// user's HWIO weights and the kernel's weight format it needs.
template <typename Primitive>
struct Compiled {
  using Pd = typename Primitive::primitive_desc;
  Compiled(const Pd& pd, const memory::desc& from, const memory::desc& to)
      : pd(pd), conv(pd), reorder_w(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to)) {}
  Pd pd;
  Primitive conv;
  dnnl::reorder reorder_w;
};

using Forward = Compiled<dnnl::convolution_forward>;
using BackwardData = Compiled<dnnl::convolution_backward_data>;
using BackwardWeights = Compiled<dnnl::convolution_backward_weights>;

Forward MakeForward(const Shape& s) {
  auto pd = ForwardPd(s);
  return Forward(pd, UserWeights(s), pd.weights_desc());
}

BackwardData MakeBackwardData(const Shape& s) {
#if DNNL_VERSION_MAJOR >= 3
  BackwardData::Pd pd(Engine(), dnnl::algorithm::convolution_direct,
                      Activation(s, s.cin, s.cb_in), AnyWeights(s),
                      Activation(s, s.cout, s.cb_out), kOnes, kOnes, kOnes, ForwardPd(s),
                      Attr(false));
#else
  BackwardData::Pd pd(
      dnnl::convolution_backward_data::desc(
          dnnl::algorithm::convolution_direct, Activation(s, s.cin, s.cb_in), AnyWeights(s),
          Activation(s, s.cout, s.cb_out), kOnes, kOnes, kOnes),
      Attr(false), Engine(), ForwardPd(s));
#endif
  return BackwardData(pd, UserWeights(s), pd.weights_desc());
}

BackwardWeights MakeBackwardWeights(const Shape& s) {
#if DNNL_VERSION_MAJOR >= 3
  BackwardWeights::Pd pd(Engine(), dnnl::algorithm::convolution_direct,
                         Activation(s, s.cin, s.cb_in), AnyWeights(s), Bias(s),
                         Activation(s, s.cout, s.cb_out), kOnes, kOnes, kOnes, ForwardPd(s),
                         Attr(false));
#else
  BackwardWeights::Pd pd(
      dnnl::convolution_backward_weights::desc(
          dnnl::algorithm::convolution_direct, Activation(s, s.cin, s.cb_in), AnyWeights(s),
          Bias(s), Activation(s, s.cout, s.cb_out), kOnes, kOnes, kOnes),
      Attr(false), Engine(), ForwardPd(s));
#endif
  return BackwardWeights(pd, pd.diff_weights_desc(), UserWeights(s));
}

// Creating a primitive JIT-compiles its kernel (milliseconds), so each shape
// is built once. Executing one primitive from several threads at once is
// safe: every call brings its own memory and scratchpad.
template <typename P>
const P& Cached(const Shape& s, P (*make)(const Shape&)) {
  static std::mutex mu;
  static std::map<decltype(s.Key()), std::unique_ptr<P>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& p = cache[s.Key()];
  if (!p) p = std::make_unique<P>(make(s));
  return *p;
}

// Weights in the kernel's format: the user's buffer when they agree, else a
// reorder into thread scratch.
memory KernelWeights(const memory::desc& want, const Shape& s, float* hwio,
                     const dnnl::reorder& reorder, dnnl::stream& stream, size_t slot) {
  memory user(UserWeights(s), Engine(), hwio);
  if (want == UserWeights(s)) return user;
  memory out(want, Engine(), ThreadScratch().Get(slot, want.get_size()));
  reorder.execute(stream, user, out);
  return out;
}

memory Scratchpad(const memory::desc& desc, size_t slot) {
  return memory(desc, Engine(), ThreadScratch().Get(slot, desc.get_size()));
}

template <typename B>
Shape ShapeOf(const B& x, const B& y, bool relu) {
  // x: [N, Cin/cb_in, H, W, cb_in], y: [N, Cout/cb_out, H, W, cb_out].
  auto xd = x.dimensions();
  auto yd = y.dimensions();
  return Shape{xd[0], xd[2], xd[3], xd[1] * xd[4], yd[1] * yd[4], xd[4], yd[4], relu};
}

ffi::Error Fail(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN convolution: " + what);
}

ffi::Error Valid(const Shape& s) {
  if (ActivationTag(s.cb_in) == tag::undef || ActivationTag(s.cb_out) == tag::undef)
    return Fail("unsupported channel block");
  return ffi::Error::Success();
}

// Runs body(stream) for a layer, turning exceptions (oneDNN's, allocation
// failures) into FFI errors.
template <typename Body>
ffi::Error Run(const Shape& s, Body body) {
  if (auto e = Valid(s); e.failure()) return e;
  try {
    dnnl::stream stream(Engine());
    body(stream);
    stream.wait();
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y, bool relu) {
  Shape s = ShapeOf(x, *y, relu);
  return Run(s, [&](dnnl::stream& stream) {
    const Forward& p = Cached(s, MakeForward);
    memory weights = KernelWeights(p.pd.weights_desc(), s, w.typed_data(), p.reorder_w, stream, 0);
    p.conv.execute(stream, {{DNNL_ARG_SRC, memory(p.pd.src_desc(), Engine(), x.typed_data())},
                            {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_BIAS, memory(p.pd.bias_desc(), Engine(), b.typed_data())},
                            {DNNL_ARG_DST, memory(p.pd.dst_desc(), Engine(), y->typed_data())},
                            {DNNL_ARG_SCRATCHPAD, Scratchpad(p.pd.scratchpad_desc(), 1)}});
  });
}

void RunBackwardData(const Shape& s, float* g, float* w, float* dx, dnnl::stream& stream) {
  const BackwardData& p = Cached(s, MakeBackwardData);
  memory weights = KernelWeights(p.pd.weights_desc(), s, w, p.reorder_w, stream, 0);
  p.conv.execute(stream, {{DNNL_ARG_DIFF_DST, memory(p.pd.diff_dst_desc(), Engine(), g)},
                          {DNNL_ARG_WEIGHTS, weights},
                          {DNNL_ARG_DIFF_SRC, memory(p.pd.diff_src_desc(), Engine(), dx)},
                          {DNNL_ARG_SCRATCHPAD, Scratchpad(p.pd.scratchpad_desc(), 1)}});
}

void RunBackwardWeights(const Shape& s, float* x, float* g, float* dw, float* db,
                        dnnl::stream& stream) {
  const BackwardWeights& p = Cached(s, MakeBackwardWeights);
  memory user(UserWeights(s), Engine(), dw);
  bool direct = p.pd.diff_weights_desc() == UserWeights(s);
  memory kernel_dw = direct ? user
                            : memory(p.pd.diff_weights_desc(), Engine(),
                                     ThreadScratch().Get(0, p.pd.diff_weights_desc().get_size()));
  p.conv.execute(stream, {{DNNL_ARG_SRC, memory(p.pd.src_desc(), Engine(), x)},
                          {DNNL_ARG_DIFF_DST, memory(p.pd.diff_dst_desc(), Engine(), g)},
                          {DNNL_ARG_DIFF_WEIGHTS, kernel_dw},
                          {DNNL_ARG_DIFF_BIAS, memory(p.pd.diff_bias_desc(), Engine(), db)},
                          {DNNL_ARG_SCRATCHPAD, Scratchpad(p.pd.scratchpad_desc(), 1)}});
  if (!direct) p.reorder_w.execute(stream, kernel_dw, user);
}

// Input, weight and bias gradients in one call: as two custom calls XLA ran
// them side by side, and two OpenMP teams on the same cores ran slower than
// one after the other.
ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                        ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                        ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db) {
  Shape s = ShapeOf(x, g, false);
  return Run(s, [&](dnnl::stream& stream) {
    RunBackwardData(s, g.typed_data(), w.typed_data(), dx->typed_data(), stream);
    RunBackwardWeights(s, x.typed_data(), g.typed_data(), dw->typed_data(), db->typed_data(),
                       stream);
  });
}

// Weight and bias gradients only (the image needs no input gradient).
ffi::Error BackwardWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                               ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db) {
  Shape s = ShapeOf(x, g, false);
  return Run(s, [&](dnnl::stream& stream) {
    RunBackwardWeights(s, x.typed_data(), g.typed_data(), dw->typed_data(), db->typed_data(),
                       stream);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggOnednnConvForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggOnednnConvBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VggOnednnConvBackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The channel block the best kernels on this CPU use: 16 with AVX-512, else 8.
extern "C" int VggOnednnChannelBlock() {
  auto isa = dnnl::get_effective_cpu_isa();
  return isa >= dnnl::cpu_isa::avx512_core ? 16 : 8;
}

// Which implementation oneDNN picked for a layer (kind 0: forward, 1:
// backward data, 2: backward weights), e.g. "jit:avx512_core"; "ref:any" is
// its slow reference code. For tests and the benchmark.
extern "C" int VggOnednnImplInfo(int64_t n, int64_t h, int64_t w, int64_t cin, int64_t cout,
                                 int64_t cb_in, int64_t cb_out, int kind, char* out, int size) {
  try {
    Shape s{n, h, w, cin, cout, cb_in, cb_out, false};
    if (Valid(s).failure()) return -1;
    const char* info = kind == 0   ? Cached(s, MakeForward).pd.impl_info_str()
                       : kind == 1 ? Cached(s, MakeBackwardData).pd.impl_info_str()
                                   : Cached(s, MakeBackwardWeights).pd.impl_info_str();
    std::snprintf(out, size, "%s", info);
  } catch (const std::exception& e) {
    return -1;
  }
  return 0;
}
