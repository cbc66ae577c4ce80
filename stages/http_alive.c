/* http_alive: is a service up at all (see http_alive.h). */
#include <curl/curl.h>

#include "http_alive.h"

static size_t discard(char *data, size_t size, size_t n, void *arg)
{
    (void)data;
    (void)arg;
    return size * n;
}

int dp_http_alive(const char *url, const struct curl_slist *headers,
                  long timeout_ms)
{
    CURL *e = curl_easy_init();
    if (!e)
        return 0;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    if (headers)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    long status = 0;
    if (curl_easy_perform(e) == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    return status >= 100 && status < 500;
}
