#include "kernel_call.h"

namespace lorakit {
namespace napi {

void KernelCall::check_access() const {
  for (size_t i = 0; i < uses.size(); i++) {
    const Use& u = uses[i];
    Storage* s = u.tensor->storage();
    if (!s) throw_state(u.name + ": the tensor was disposed");
    if (u.write && s->busy.load() > 0) throw_state(u.name + ": the tensor is in use by async work and cannot be written");
    if (!u.write && s->writers.load() > 0) throw_state(u.name + ": the tensor is being written by async work");
    if (!u.write) continue;
    for (size_t j = 0; j < uses.size(); j++) {
      const Use& o = uses[j];
      if (j == i || o.tensor != u.tensor || (!o.write && o.inplace_ok)) continue;
      throw_range(u.name + ": must not be the same tensor as " + o.name);
    }
  }
}

void KernelCall::mark_writes() const {
  for (const Use& u : uses)
    if (u.write) u.tensor->storage()->version.fetch_add(1);
}

void KernelCall::order_streams() {
  for (const Use& u : uses) {
    const Backend& b = backend_for(u.tensor->device());
    if (!b.order_use) continue;  // a device without streams
    if (!stream_backend) {
      stream_backend = &b;
      stream = b.current_stream();
    }
    b.order_use(u.tensor->ref().data, u.write);
  }
}

StreamScope::StreamScope(const Backend* b, uint64_t id)
    : b_(b && b->set_thread_stream ? b : nullptr), prev_(b_ ? b_->current_stream() : 0) {
  if (b_) b_->set_thread_stream(id);
}

StreamScope::~StreamScope() {
  if (b_) b_->set_thread_stream(prev_);
}

}  // namespace napi
}  // namespace lorakit
