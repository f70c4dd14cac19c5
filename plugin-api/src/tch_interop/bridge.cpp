// Bridge to libtorch's own DLPack converter: `at::fromDLPackVersioned` takes ownership of a
// DLManagedTensorVersioned (its deleter runs when the last tensor sharing the memory is freed),
// and `at::toDLPackVersioned` exports a tensor whose deleter drops a reference to it.
// Tensors are passed as `at::Tensor*` allocated with `new`, as tch's own C API does.

#include <ATen/DLConvertor.h>
#include <ATen/dlpack.h>
#include <cstring>
#include <exception>

static char* copy_message(const char* message) {
  size_t n = std::strlen(message);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, message, n + 1);
  return out;
}

extern "C" {

void* flowgym_tensor_from_dlpack(DLManagedTensorVersioned* src, char** error) {
  try {
    return new at::Tensor(at::fromDLPackVersioned(src));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

DLManagedTensorVersioned* flowgym_tensor_to_dlpack(const void* tensor, char** error) {
  try {
    return at::toDLPackVersioned(*static_cast<const at::Tensor*>(tensor));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

void flowgym_free_message(char* message) { std::free(message); }

}  // extern "C"
