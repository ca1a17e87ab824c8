// A minimal parallel for: static threads, dynamic chunks, first exception
// rethrown after join (as hnswlib's ParallelFor), and a cancellation check
// that the calling thread runs between chunks (Ctrl-C from Python).
#pragma once
#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace simsearch {

struct Interrupted : std::exception {
    const char* what() const noexcept override { return "interrupted"; }
};

// Returns true when the caller asked to stop (e.g. a pending KeyboardInterrupt).
using CancelCheck = std::function<bool()>;

template <class Fn>
void parallel_for(size_t n, size_t num_threads, Fn fn, const CancelCheck& cancelled = nullptr, size_t chunk = 0) {
    if (n == 0) return;
    num_threads = std::max<size_t>(1, std::min(num_threads, n));
    if (chunk == 0) chunk = std::max<size_t>(1, std::min<size_t>(64, n / (num_threads * 8)));
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::exception_ptr error;
    std::mutex error_mu;

    auto worker = [&](bool is_caller) {
        try {
            while (!stop.load(std::memory_order_relaxed)) {
                if (is_caller && cancelled && cancelled()) {
                    stop = true;
                    throw Interrupted();
                }
                const size_t begin = next.fetch_add(chunk);
                if (begin >= n) break;
                const size_t end = std::min(n, begin + chunk);
                for (size_t i = begin; i < end; ++i) fn(i);
            }
        } catch (...) {
            std::lock_guard<std::mutex> g(error_mu);
            if (!error) error = std::current_exception();
            stop = true;
        }
    };

    std::vector<std::thread> threads;
    threads.reserve(num_threads - 1);
    for (size_t t = 1; t < num_threads; ++t) threads.emplace_back(worker, false);
    worker(true);
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
}

}  // namespace simsearch
