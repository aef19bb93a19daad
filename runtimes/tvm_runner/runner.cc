// tvm_runner: load an `adntn compile` model.so with the TVM 0.27 (tvm-ffi) C++ runtime API,
// feed it .npy (float32, C order) or raw float32 inputs, run the Relax VM function `main`,
// and write every output as OUTDIR/output_<i>.npy.
//
// Usage:
//   tvm_runner MODEL.so OUTDIR [--materialize] [--repeat N] INPUT...
//     INPUT is either FILE.npy or FILE.bin:D0xD1x...  (raw little-endian float32 of that shape)
//     --materialize  call the VM function `materialize` once (ADNTN weight generation at load)
//                    and append its results to the inputs of `main`.
//     --repeat N     run `main` N extra times and print p50 latency in ms.
//
// Build: see adntn_export/tvm_backend/runner_build.py (links libtvm_runtime.so + libtvm_ffi.so).
#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
using ffi::Tensor;

// CPU allocator for ffi::Tensor::FromNDAlloc (64-byte aligned, as TVM kernels expect).
struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, ((n + 63) / 64) * 64 + 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// Copy a tensor that may live on an accelerator to host memory (CPU tensors are used directly).
static const float* HostData(const Tensor& t) {
  if (t.device().device_type != kDLCPU) throw std::runtime_error("non-CPU outputs not supported");
  return reinterpret_cast<const float*>(static_cast<const char*>(t.data_ptr()) + t.GetDLTensorPtr()->byte_offset);
}

static DLDataType F32() { return DLDataType{kDLFloat, 32, 1}; }

static std::vector<int64_t> ParseShapeTuple(const std::string& header) {
  auto p = header.find("'shape':");
  if (p == std::string::npos) throw std::runtime_error("npy header has no shape");
  auto l = header.find('(', p), r = header.find(')', p);
  std::vector<int64_t> shape;
  std::stringstream ss(header.substr(l + 1, r - l - 1));
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (tok.find_first_not_of(" ") != std::string::npos) shape.push_back(std::stoll(tok));
  }
  return shape;
}

static Tensor LoadInput(const std::string& spec) {
  std::string path = spec;
  std::vector<int64_t> shape;
  bool raw = false;
  auto colon = spec.rfind(':');
  if (colon != std::string::npos && spec.size() > 4 && spec.substr(spec.size() - 4) != ".npy") {
    path = spec.substr(0, colon);
    std::stringstream ss(spec.substr(colon + 1));
    std::string tok;
    while (std::getline(ss, tok, 'x')) shape.push_back(std::stoll(tok));
    raw = true;
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open input " + path);
  if (!raw) {
    char magic[6];
    f.read(magic, 6);
    if (std::string(magic + 1, 5) != "NUMPY") throw std::runtime_error(path + ": not a .npy file");
    unsigned char ver[2];
    f.read(reinterpret_cast<char*>(ver), 2);
    uint32_t hlen = 0;
    if (ver[0] == 1) {
      uint16_t h16;
      f.read(reinterpret_cast<char*>(&h16), 2);
      hlen = h16;
    } else {
      f.read(reinterpret_cast<char*>(&hlen), 4);
    }
    std::string header(hlen, ' ');
    f.read(&header[0], hlen);
    if (header.find("'<f4'") == std::string::npos)
      throw std::runtime_error(path + ": only float32 ('<f4') .npy inputs are supported");
    if (header.find("'fortran_order': True") != std::string::npos)
      throw std::runtime_error(path + ": Fortran-order arrays are not supported");
    shape = ParseShapeTuple(header);
  }
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> buf(n);
  f.read(reinterpret_cast<char*>(buf.data()), n * 4);
  if (f.gcount() != n * 4) throw std::runtime_error(path + ": file shorter than its shape");
  Tensor t = Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(shape), F32(), DLDevice{kDLCPU, 0});
  std::copy(buf.begin(), buf.end(), static_cast<float*>(t.data_ptr()));
  return t;
}

static void SaveNpy(const std::string& path, const Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  if (dl->dtype.code != kDLFloat || dl->dtype.bits != 32)
    throw std::runtime_error("only float32 outputs are supported");
  int64_t n = 1;
  std::string shape = "(";
  for (int i = 0; i < dl->ndim; ++i) {
    n *= dl->shape[i];
    shape += std::to_string(dl->shape[i]) + (dl->ndim == 1 ? ",)" : (i + 1 < dl->ndim ? ", " : ")"));
  }
  if (dl->ndim == 0) shape = "()";
  if (!t.IsContiguous()) throw std::runtime_error("non-contiguous output");
  const float* data = HostData(t);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t hlen = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&hlen), 2);
  f.write(header.data(), header.size());
  f.write(reinterpret_cast<const char*>(data), n * 4);
}

static void Flatten(const ffi::Any& v, std::vector<Tensor>* out) {
  if (auto t = v.as<Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = v.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& e : *arr) Flatten(e, out);
  } else {
    throw std::runtime_error("unsupported VM output type " + v.GetTypeKey());
  }
}

static ffi::Any Call(const ffi::Function& fn, const std::vector<ffi::Any>& args) {
  std::vector<ffi::AnyView> views(args.begin(), args.end());
  ffi::Any ret;
  fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &ret);
  return ret;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: tvm_runner MODEL.so OUTDIR [--materialize] [--repeat N] INPUT...\n";
    return 2;
  }
  try {
    std::string model = argv[1], outdir = argv[2];
    bool materialize = false;
    int repeat = 0;
    std::vector<ffi::Any> args;
    for (int i = 3; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--materialize") {
        materialize = true;
      } else if (a == "--repeat" && i + 1 < argc) {
        repeat = std::atoi(argv[++i]);
      } else {
        args.push_back(LoadInput(a));
      }
    }
    if (model.find('/') == std::string::npos) model = "./" + model;  // dlopen needs a path
    ffi::Module lib = ffi::Module::LoadFromFile(model);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // (device_type, device_id, allocator) for the CPU; 2 = pooled allocator.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    if (materialize) {
      std::vector<Tensor> weights;
      Flatten(Call(vm->GetFunction("materialize").value(), {}), &weights);
      for (auto& w : weights) args.push_back(w);
    }
    ffi::Function main_fn = vm->GetFunction("main").value();
    ffi::Any ret = Call(main_fn, args);
    std::vector<Tensor> outs;
    Flatten(ret, &outs);
    for (size_t i = 0; i < outs.size(); ++i)
      SaveNpy(outdir + "/output_" + std::to_string(i) + ".npy", outs[i]);
    if (repeat > 0) {
      std::vector<double> ms;
      for (int r = 0; r < repeat; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        Call(main_fn, args);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                         .count());
      }
      std::sort(ms.begin(), ms.end());
      std::printf("p50_ms=%.4f\n", ms[ms.size() / 2]);
    }
    std::printf("outputs=%zu\n", outs.size());
  } catch (const std::exception& e) {
    std::cerr << "tvm_runner: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
