<?php
// GearmanWorker (php-gearman, libgearman) serving the interop functions; usage:
//   php php_worker.php PORT LOGFILE
// Each job appends one JSON line {"fn", "arg" (hex of the first 64 bytes), "len"} to LOGFILE.
declare(strict_types=1);

[, $port, $logfile] = $argv;
$log = fopen($logfile, 'a');
$worker = new GearmanWorker();
$worker->addServer('127.0.0.1', (int)$port);

function logged(string $fn, callable $code): callable
{
    return function (GearmanJob $job) use ($fn, $code) {
        global $log;
        $arg = $job->workload();
        fwrite($log, json_encode(['fn' => $fn, 'arg' => bin2hex(substr($arg, 0, 64)),
                                  'len' => strlen($arg)]) . "\n");
        fflush($log);
        return $code($job, $arg);
    };
}

$functions = [
    'reverse' => fn (GearmanJob $job, string $arg) => strrev($arg),
    'echo' => fn (GearmanJob $job, string $arg) => $arg,
    'progress' => function (GearmanJob $job, string $arg) {
        $job->sendStatus(1, 3);
        $job->sendData('d1');
        $job->sendWarning('w1');
        $job->sendStatus(2, 3);
        $job->sendData('d2');
        return 'done';
    },
    'fail' => function (GearmanJob $job, string $arg) {
        $job->sendFail();
        return null;
    },
    'exception' => function (GearmanJob $job, string $arg) {
        $job->sendException('boom');
        return null;
    },
    'gate' => function (GearmanJob $job, string $path) {
        $job->sendStatus(1, 2);
        $deadline = microtime(true) + 20;
        while (!file_exists($path) && microtime(true) < $deadline) {
            usleep(20000);
        }
        return 'opened';
    },
];
foreach ($functions as $fn => $code) {
    $worker->addFunction($fn, logged($fn, $code));
}
$keepGoing = [GEARMAN_SUCCESS, GEARMAN_IO_WAIT, GEARMAN_NO_JOBS, GEARMAN_WORK_FAIL,
              GEARMAN_WORK_EXCEPTION];
while ($worker->work() || in_array($worker->returnCode(), $keepGoing, true)) {
}
fwrite(STDERR, 'worker stopped: ' . $worker->error() . "\n");
exit(1);
