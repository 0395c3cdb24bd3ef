// A launch's last resort against a fiber that never reaches a scheduling point (an endless loop with no
// collective, barrier or spin in it): the engine's own timeout cannot fire then, because the engine never regains
// control. A thread beside the launch watches a heartbeat and, when it stops for longer than the limit, prints
// which fiber is running and aborts the process (a crash with a message, instead of a test run that never ends).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace flashcore::emu_common {

class Watchdog {
 public:
  // `label` prefixes the message; `seconds` is how long the heartbeat may stop.
  Watchdog(const char* label, double seconds);
  ~Watchdog();  // stops the watching thread
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Called at every scheduling point, with the fiber about to run (block / CTA index, thread index).
  void beat(int block, int thread) {
    block_.store(block, std::memory_order_relaxed);
    thread_.store(thread, std::memory_order_relaxed);
    beats_.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  void watch();

  const char* label_;
  double seconds_;
  std::atomic<uint64_t> beats_{0};
  std::atomic<int> block_{-1}, thread_{-1};
  std::mutex mutex_;
  std::condition_variable stop_;
  bool stopping_ = false;
  std::thread thread_watch_;
};

}  // namespace flashcore::emu_common
