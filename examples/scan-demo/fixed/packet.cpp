#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <vector>

class Packet {
public:
    void setPayload(const unsigned char *data, std::size_t len) {
        unsigned char staging[64];
        if (len > sizeof staging) {
            throw std::length_error("payload too large");
        }
        std::memcpy(staging, data, len);
        body_.assign(staging, staging + len);
    }

private:
    std::vector<unsigned char> body_;
};
