// Memory for the large per-slot arrays: owned heap memory, or a window into a
// memory-mapped index file. A mapped buffer that must grow is copied to the
// heap first, so a loaded index stays writable.
#pragma once
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace simsearch {

// A mapped file, held open for as long as any buffer points into it: the
// mapping and the descriptor keep its inode alive, so the file may be
// replaced by rename meanwhile (the mapping goes on reading the old one).
// In-place rewrites are another matter: see io.hpp.
struct MappedFile {
    void* base = nullptr;
    size_t size = 0;
    int fd = -1;
    MappedFile(void* b, size_t s, int file) : base(b), size(s), fd(::fcntl(file, F_DUPFD_CLOEXEC, 0)) {}
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile() {
        if (base) munmap(base, size);
        if (fd >= 0) ::close(fd);
    }
};

class Buffer {
public:
    Buffer() = default;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { release(); }

    char* data() const { return ptr_; }
    size_t bytes() const { return bytes_; }
    bool mapped() const { return map_ != nullptr; }

    // Grow or shrink to `bytes`, keeping the first min(old, new) bytes.
    void resize(size_t bytes) {
        if (bytes == bytes_ && !map_) return;
        if (map_) {
            char* p = static_cast<char*>(std::malloc(bytes ? bytes : 1));
            if (!p) throw std::bad_alloc();
            std::memcpy(p, ptr_, std::min(bytes, bytes_));
            map_.reset();
            ptr_ = p;
        } else {
            char* p = static_cast<char*>(std::realloc(ptr_, bytes ? bytes : 1));
            if (!p) throw std::bad_alloc();
            ptr_ = p;
        }
        bytes_ = bytes;
    }

    void attach(std::shared_ptr<MappedFile> map, char* p, size_t bytes) {
        release();
        map_ = std::move(map);
        ptr_ = p;
        bytes_ = bytes;
    }

    void release() {
        if (!map_) std::free(ptr_);
        map_.reset();
        ptr_ = nullptr;
        bytes_ = 0;
    }

private:
    char* ptr_ = nullptr;
    size_t bytes_ = 0;
    std::shared_ptr<MappedFile> map_;
};

}  // namespace simsearch
