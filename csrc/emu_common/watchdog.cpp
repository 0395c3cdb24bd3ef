// See watchdog.h.
#include "watchdog.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace flashcore::emu_common {

namespace {
constexpr double kPollSeconds = 1.0;  // how often the heartbeat is sampled: a hang is reported within this of the limit
}  // namespace

Watchdog::Watchdog(const char* label, double seconds) : label_(label), seconds_(seconds) {
  thread_watch_ = std::thread([this] { watch(); });
}

Watchdog::~Watchdog() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_.notify_one();
  thread_watch_.join();
}

void Watchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  uint64_t last = beats_.load(std::memory_order_relaxed);
  auto since = std::chrono::steady_clock::now();
  while (!stop_.wait_for(lock, std::chrono::duration<double>(kPollSeconds), [this] { return stopping_; })) {
    const uint64_t now_beats = beats_.load(std::memory_order_relaxed);
    const auto now = std::chrono::steady_clock::now();
    if (now_beats != last) {
      last = now_beats;
      since = now;
      continue;
    }
    const double stalled = std::chrono::duration<double>(now - since).count();
    if (stalled > seconds_) {
      std::fprintf(stderr,
                   "%s: no scheduling point for %.0f s; the running fiber is block %d thread %d (an endless loop "
                   "without a collective, barrier or spin?). Aborting.\n",
                   label_, stalled, block_.load(), thread_.load());
      std::fflush(stderr);
      std::abort();
    }
  }
}

}  // namespace flashcore::emu_common
