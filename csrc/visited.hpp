// Visited marks for graph search: one epoch counter per slot, reset by
// bumping the epoch instead of clearing the array (as hnswlib does).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace simsearch {

class VisitedList {
public:
    explicit VisitedList(size_t n) : marks_(n, 0) {}
    size_t size() const { return marks_.size(); }
    // Start a new search; returns the epoch that marks "visited".
    uint16_t next_epoch() {
        if (++epoch_ == 0) {
            std::fill(marks_.begin(), marks_.end(), 0);
            epoch_ = 1;
        }
        return epoch_;
    }
    uint16_t* data() { return marks_.data(); }

private:
    std::vector<uint16_t> marks_;
    uint16_t epoch_ = 0;
};

class VisitedPool {
public:
    std::unique_ptr<VisitedList> get(size_t n) {
        {
            std::lock_guard<std::mutex> g(mu_);
            while (!free_.empty()) {
                auto v = std::move(free_.back());
                free_.pop_back();
                if (v->size() >= n) return v;
            }
        }
        return std::make_unique<VisitedList>(n);
    }
    void put(std::unique_ptr<VisitedList> v) {
        std::lock_guard<std::mutex> g(mu_);
        free_.push_back(std::move(v));
    }
    void clear() {
        std::lock_guard<std::mutex> g(mu_);
        free_.clear();
    }

private:
    std::mutex mu_;
    std::vector<std::unique_ptr<VisitedList>> free_;
};

}  // namespace simsearch
