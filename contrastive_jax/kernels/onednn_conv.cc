// oneDNN convolutions (NHWC activations, HWIO kernels, float32) as XLA:CPU FFI
// custom calls: forward, input gradient and weight gradient. Compiled on first
// use by contrastive_jax/kernels/onednn_conv.py (g++, the oneDNN wheel's headers
// and library); see that module for why and for the fallback.
//
// oneDNN's dims are always logical NCHW / OIHW; the format tags give the memory
// layouts (nhwc, hwio), so the buffers XLA hands over are used in place. The
// kernel layout the primitive prefers (blocked, `any`) is reached by a reorder
// of the small weight tensor on each call. Primitives are built once per
// geometry and cached.
//
// XLA:CPU may call these handlers from several of its threads at once (the
// input and weight gradients of one layer, or one call per device when a step
// runs on several CPU devices). Run that way, oneDNN's OpenMP teams, one per
// calling thread, gave wrong weight gradients and hung the process at exit in
// tests (8 devices). So every call is handed to one worker thread, one at a
// time: oneDNN always runs on the same thread with the same OpenMP team, and
// it uses every core itself.
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// The one thread that runs oneDNN (see the top of this file). Never destroyed:
// it waits for work until the process exits.
class Worker {
 public:
  static Worker& Get() {
    static Worker* worker = new Worker();
    return *worker;
  }
  // Runs fn on the worker thread and waits; returns its error, if any.
  std::string Run(const std::function<void()>& fn) {
    std::lock_guard<std::mutex> one_call(call_mu_);
    std::unique_lock<std::mutex> lock(mu_);
    job_ = &fn;
    error_.clear();
    done_ = false;
    cv_.notify_all();
    cv_.wait(lock, [this] { return done_; });
    return error_;
  }

 private:
  Worker() { std::thread([this] { Loop(); }).detach(); }
  void Loop() {
    for (;;) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return job_ != nullptr; });
      const std::function<void()>* job = job_;
      lock.unlock();
      std::string error;
      try {
        (*job)();
      } catch (const std::exception& e) {
        error = e.what();
        if (error.empty()) error = "oneDNN error";
      }
      lock.lock();
      job_ = nullptr;
      error_ = error;
      done_ = true;
      cv_.notify_all();
    }
  }
  std::mutex call_mu_, mu_;
  std::condition_variable cv_;
  const std::function<void()>* job_ = nullptr;
  std::string error_;
  bool done_ = false;
};

static ffi::Error RunOnWorker(const std::function<void()>& fn) {
  std::string error = Worker::Get().Run(fn);
  if (error.empty()) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN convolution: " + error);
}

static dnnl::engine& Eng() { static dnnl::engine e(dnnl::engine::kind::cpu, 0); return e; }

// Geometry of one convolution: input n x h x w x c, kernel kh x kw x c x o,
// output n x oh x ow x o, stride s, padding top/left/bottom/right.
struct Geo {
  int64_t n, h, w, c, kh, kw, o, oh, ow, s, pt, pl, pb, pr;
  memory::dims src() const { return {n, c, h, w}; }
  memory::dims wei() const { return {o, c, kh, kw}; }
  memory::dims dst() const { return {n, o, oh, ow}; }
  memory::dims strides() const { return {s, s}; }
  memory::dims padl() const { return {pt, pl}; }
  memory::dims padr() const { return {pb, pr}; }
  std::string key() const {
    std::string k;
    for (int64_t v : {n, h, w, c, kh, kw, o, oh, ow, s, pt, pl, pb, pr}) k += std::to_string(v) + ",";
    return k;
  }
};

struct Prims {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_d_pd;
  dnnl::convolution_backward_data bwd_d;
  dnnl::convolution_backward_weights::primitive_desc bwd_w_pd;
  dnnl::convolution_backward_weights bwd_w;
};

static Prims& Get(const Geo& g) {
  static std::mutex mu;
  static std::unordered_map<std::string, Prims*> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(g.key());
  if (it != cache.end()) return *it->second;
  auto src = memory::desc(g.src(), dt::f32, tag::nhwc);
  auto dst = memory::desc(g.dst(), dt::f32, tag::nhwc);
  auto wany = memory::desc(g.wei(), dt::f32, tag::any);
  auto p = new Prims();
  p->fwd_pd = dnnl::convolution_forward::primitive_desc(
      Eng(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      src, wany, dst, g.strides(), g.padl(), g.padr());
  p->fwd = dnnl::convolution_forward(p->fwd_pd);
  p->bwd_d_pd = dnnl::convolution_backward_data::primitive_desc(
      Eng(), dnnl::algorithm::convolution_direct, src, wany, dst, g.strides(), g.padl(), g.padr(), p->fwd_pd);
  p->bwd_d = dnnl::convolution_backward_data(p->bwd_d_pd);
  p->bwd_w_pd = dnnl::convolution_backward_weights::primitive_desc(
      Eng(), dnnl::algorithm::convolution_direct, src, wany, dst, g.strides(), g.padl(), g.padr(), p->fwd_pd);
  p->bwd_w = dnnl::convolution_backward_weights(p->bwd_w_pd);
  cache[g.key()] = p;
  return *p;
}

static memory Wei(const Geo& g, float* data) {
  return memory(memory::desc(g.wei(), dt::f32, tag::hwio), Eng(), data);
}

// Weights in the primitive's preferred layout (a reorder when it differs).
static memory ToPrim(const memory::desc& want, memory user, dnnl::stream& st) {
  if (want == user.get_desc()) return user;
  memory m(want, Eng());
  dnnl::reorder(user, m).execute(st, user, m);
  return m;
}

// Shapes from the FFI buffers: x [n, h, w, c], w [kh, kw, c, o], y [n, oh, ow, o].
static Geo MakeGeo(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                   ffi::Span<const int64_t> yd, int64_t s, int64_t pt, int64_t pl, int64_t pb, int64_t pr) {
  return Geo{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], s, pt, pl, pb, pr};
}

static ffi::Error Fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                      int64_t s, int64_t pt, int64_t pl, int64_t pb, int64_t pr) {
  Geo g = MakeGeo(x.dimensions(), w.dimensions(), y->dimensions(), s, pt, pl, pb, pr);
  return RunOnWorker([&] {
    Prims& p = Get(g);
    dnnl::stream st(Eng());
    memory src(memory::desc(g.src(), dt::f32, tag::nhwc), Eng(), x.typed_data());
    memory dst(memory::desc(g.dst(), dt::f32, tag::nhwc), Eng(), y->typed_data());
    memory wei = ToPrim(p.fwd_pd.weights_desc(), Wei(g, w.typed_data()), st);
    p.fwd.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    st.wait();
  });
}

static ffi::Error BwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                          int64_t s, int64_t pt, int64_t pl, int64_t pb, int64_t pr) {
  Geo g = MakeGeo(dx->dimensions(), w.dimensions(), dy.dimensions(), s, pt, pl, pb, pr);
  return RunOnWorker([&] {
    Prims& p = Get(g);
    dnnl::stream st(Eng());
    memory ddst(memory::desc(g.dst(), dt::f32, tag::nhwc), Eng(), dy.typed_data());
    memory dsrc(memory::desc(g.src(), dt::f32, tag::nhwc), Eng(), dx->typed_data());
    memory wei = ToPrim(p.bwd_d_pd.weights_desc(), Wei(g, w.typed_data()), st);
    p.bwd_d.execute(st, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei},
                         {DNNL_ARG_DIFF_SRC, dsrc}});
    st.wait();
  });
}

static ffi::Error BwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                             int64_t s, int64_t pt, int64_t pl, int64_t pb, int64_t pr) {
  Geo g = MakeGeo(x.dimensions(), dw->dimensions(), dy.dimensions(), s, pt, pl, pb, pr);
  return RunOnWorker([&] {
    Prims& p = Get(g);
    dnnl::stream st(Eng());
    memory src(memory::desc(g.src(), dt::f32, tag::nhwc), Eng(), x.typed_data());
    memory ddst(memory::desc(g.dst(), dt::f32, tag::nhwc), Eng(), dy.typed_data());
    memory user = Wei(g, dw->typed_data());
    auto want = p.bwd_w_pd.diff_weights_desc();
    memory dwei = want == user.get_desc() ? user : memory(want, Eng());
    p.bwd_w.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst},
                         {DNNL_ARG_DIFF_WEIGHTS, dwei}});
    if (!(want == user.get_desc())) dnnl::reorder(dwei, user).execute(st, dwei, user);
    st.wait();
  });
}

// Stride and explicit padding, as int64 attributes of every call.
#define ATTRS .Attr<int64_t>("s").Attr<int64_t>("pt").Attr<int64_t>("pl").Attr<int64_t>("pb").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, Fwd,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, BwdData,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, BwdWeights,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() ATTRS);
